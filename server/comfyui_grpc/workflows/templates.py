"""Typed templates that build graphs real ComfyUI accepts.

ComfyUI fills in no defaults over the API, so every required input is sent.
The video chain is AnimateDiff-Evolved's Gen2 one (load motion model ->
apply -> use evolved sampling -> KSampler); VideoHelperSuite's combine node
also gets its per-format options. Each graph is built fresh per job, with a
``filename_prefix`` under the job id so outputs never collide and a repeated
request never returns another job's cached files.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import FieldViolation, InvalidArgument

DEFAULT_IMAGE_CHECKPOINT = "sd_xl_base_1.0.safetensors"
DEFAULT_VIDEO_CHECKPOINT = "realisticVisionV51_v51VAE.safetensors"
DEFAULT_MOTION_MODULE = "mm_sd_v15_v2.ckpt"
OUTPUT_SUBFOLDER = "comfyui-grpc"
MAX_SEED = 2**64 - 1
MAX_PROMPT_CHARS = 20_000

VIDEO_FORMATS: dict[str, dict[str, Any]] = {
    "video/h264-mp4": {
        "pix_fmt": "yuv420p",
        "crf": 19,
        "save_metadata": True,
        "trim_to_audio": False,
    },
    "image/gif": {},
    "image/webp": {"lossless": True},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TextToImageParams:
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 20
    cfg: float = 7.0
    seed: int | None = None
    sampler: str = "euler"
    scheduler: str = "normal"
    checkpoint: str = DEFAULT_IMAGE_CHECKPOINT
    batch_size: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoParams:
    prompt: str
    negative_prompt: str = ""
    frames: int = 16
    fps: float = 8.0
    width: int = 512
    height: int = 512
    motion_module: str = DEFAULT_MOTION_MODULE
    checkpoint: str = DEFAULT_VIDEO_CHECKPOINT
    steps: int = 20
    cfg: float = 7.0
    seed: int | None = None
    format: str = "video/h264-mp4"
    sampler: str = "euler_ancestral"
    scheduler: str = "normal"


class _Checks:
    def __init__(self, field: str) -> None:
        self.field = field
        self.violations: list[FieldViolation] = []

    def add(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(f"{self.field}.{name}", description))

    def text(self, name: str, value: str, *, required: bool) -> None:
        if required and not value.strip():
            self.add(name, "required: must not be empty")
        elif len(value) > MAX_PROMPT_CHARS:
            self.add(name, f"at most {MAX_PROMPT_CHARS} characters")

    def in_range(self, name: str, value: float, low: float, high: float) -> None:
        if not low <= value <= high:
            self.add(name, f"must be between {low:g} and {high:g} (got {value:g})")

    def dimension(self, name: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high or value % 8:
            self.add(name, f"must be a multiple of 8 between {low} and {high} (got {value})")

    def file_name(self, name: str, value: str) -> None:
        if not value or "\x00" in value or value.startswith("/") or ".." in value.split("/"):
            self.add(name, "must be a model file name as ComfyUI lists it")

    def choice(self, name: str, value: str) -> None:
        if not value or len(value) > 64 or not value.replace("_", "").replace("-", "").isalnum():
            self.add(name, "must be a ComfyUI sampler/scheduler name such as 'euler' or 'normal'")

    def raise_if_any(self, what: str) -> None:
        if self.violations:
            first = self.violations[0]
            raise InvalidArgument(
                f"invalid {what}: {first.field}: {first.description}", self.violations
            )


def _seed(seed: int | None) -> int:
    return secrets.randbelow(2**53) if seed is None else seed


def _prefix(job_id: str, stem: str) -> str:
    return f"{OUTPUT_SUBFOLDER}/{job_id}/{stem}"


def check_text_to_image(p: TextToImageParams, field: str = "text_to_image") -> None:
    c = _Checks(field)
    c.text("prompt", p.prompt, required=True)
    c.text("negative_prompt", p.negative_prompt, required=False)
    c.dimension("width", p.width, 64, 4096)
    c.dimension("height", p.height, 64, 4096)
    c.in_range("steps", p.steps, 1, 200)
    c.in_range("cfg", p.cfg, 0.0, 100.0)
    c.in_range("batch_size", p.batch_size, 1, 16)
    if p.seed is not None and not 0 <= p.seed <= MAX_SEED:
        c.add("seed", "must fit in 64 bits")
    c.choice("sampler", p.sampler)
    c.choice("scheduler", p.scheduler)
    c.file_name("checkpoint", p.checkpoint)
    c.raise_if_any("text_to_image request")


def check_video(p: VideoParams, field: str = "video") -> None:
    c = _Checks(field)
    c.text("prompt", p.prompt, required=True)
    c.text("negative_prompt", p.negative_prompt, required=False)
    c.in_range("frames", p.frames, 8, 32)
    if not 0 < p.fps <= 60:
        c.add("fps", f"must be above 0 and at most 60 (got {p.fps:g})")
    c.dimension("width", p.width, 64, 1024)
    c.dimension("height", p.height, 64, 1024)
    c.in_range("steps", p.steps, 1, 200)
    c.in_range("cfg", p.cfg, 0.0, 100.0)
    c.choice("sampler", p.sampler)
    c.choice("scheduler", p.scheduler)
    c.file_name("checkpoint", p.checkpoint)
    c.file_name("motion_module", p.motion_module)
    if p.format not in VIDEO_FORMATS:
        c.add("format", f"must be one of {', '.join(VIDEO_FORMATS)}")
    c.raise_if_any("video request")


def _sampler(
    *, model: str, positive: str, negative: str, latent: str, p: TextToImageParams | VideoParams
) -> dict[str, Any]:
    """A KSampler node reading the given nodes' first outputs."""
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": [model, 0],
            "positive": [positive, 0],
            "negative": [negative, 0],
            "latent_image": [latent, 0],
            "seed": _seed(p.seed),
            "steps": p.steps,
            "cfg": float(p.cfg),
            "sampler_name": p.sampler,
            "scheduler": p.scheduler,
            "denoise": 1.0,
        },
    }


def text_to_image_graph(
    job_id: str, p: TextToImageParams, field: str = "text_to_image"
) -> dict[str, Any]:
    check_text_to_image(p, field)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": p.checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": p.prompt, "clip": ["1", 1]}},
        "3": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": p.negative_prompt, "clip": ["1", 1]},
        },
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": p.width, "height": p.height, "batch_size": p.batch_size},
        },
        "5": _sampler(model="1", positive="2", negative="3", latent="4", p=p),
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {
            "class_type": "SaveImage",
            "inputs": {"images": ["6", 0], "filename_prefix": _prefix(job_id, "image")},
        },
    }


def video_graph(job_id: str, p: VideoParams, field: str = "video") -> dict[str, Any]:
    check_video(p, field)
    combine: dict[str, Any] = {
        "images": ["9", 0],
        "frame_rate": float(p.fps),
        "loop_count": 0,
        "filename_prefix": _prefix(job_id, "video"),
        "format": p.format,
        "pingpong": False,
        "save_output": True,
    }
    combine.update(VIDEO_FORMATS[p.format])
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": p.checkpoint}},
        "2": {"class_type": "ADE_LoadAnimateDiffModel", "inputs": {"model_name": p.motion_module}},
        "3": {
            "class_type": "ADE_ApplyAnimateDiffModel",
            "inputs": {"motion_model": ["2", 0], "start_percent": 0.0, "end_percent": 1.0},
        },
        "4": {
            "class_type": "ADE_UseEvolvedSampling",
            "inputs": {"model": ["1", 0], "m_models": ["3", 0], "beta_schedule": "autoselect"},
        },
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": p.prompt, "clip": ["1", 1]}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": p.negative_prompt, "clip": ["1", 1]},
        },
        "7": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": p.width, "height": p.height, "batch_size": p.frames},
        },
        "8": _sampler(model="4", positive="5", negative="6", latent="7", p=p),
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VHS_VideoCombine", "inputs": combine},
    }


def _fields(prefix: str, pairs: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    return {key: f"{prefix}.{name}" for key, name in pairs.items()}


TEXT_TO_IMAGE_FIELDS = _fields(
    "text_to_image",
    {
        ("1", "ckpt_name"): "checkpoint",
        ("2", "text"): "prompt",
        ("3", "text"): "negative_prompt",
        ("4", "width"): "width",
        ("4", "height"): "height",
        ("4", "batch_size"): "batch_size",
        ("5", "seed"): "seed",
        ("5", "steps"): "steps",
        ("5", "cfg"): "cfg",
        ("5", "sampler_name"): "sampler",
        ("5", "scheduler"): "scheduler",
    },
)
"""Where ComfyUI's complaints about template inputs land in the request."""

VIDEO_FIELDS = _fields(
    "video",
    {
        ("1", "ckpt_name"): "checkpoint",
        ("2", "model_name"): "motion_module",
        ("5", "text"): "prompt",
        ("6", "text"): "negative_prompt",
        ("7", "width"): "width",
        ("7", "height"): "height",
        ("7", "batch_size"): "frames",
        ("8", "seed"): "seed",
        ("8", "steps"): "steps",
        ("8", "cfg"): "cfg",
        ("8", "sampler_name"): "sampler",
        ("8", "scheduler"): "scheduler",
        ("10", "frame_rate"): "fps",
        ("10", "format"): "format",
    },
)

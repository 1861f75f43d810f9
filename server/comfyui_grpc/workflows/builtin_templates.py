"""The typed requests as templates: ``text-to-image`` and ``video``.

``GenerateRequest.text_to_image`` and ``.video`` and a ``template`` request
naming these two build their graph through the same :class:`Template`, so
ListTemplates describes exactly what the typed messages accept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .template_files import Template
from .template_params import Param
from .templates import (
    DEFAULT_IMAGE_CHECKPOINT,
    DEFAULT_MOTION_MODULE,
    DEFAULT_VIDEO_CHECKPOINT,
    TEXT_TO_IMAGE_FIELDS,
    VIDEO_FIELDS,
    VIDEO_FORMATS,
    TextToImageParams,
    VideoParams,
    text_to_image_graph,
    video_graph,
)

BUILTIN_VERSION = 1


def _binds(fields: Mapping[tuple[str, str], str]) -> dict[str, tuple[tuple[str, str], ...]]:
    by_name: dict[str, list[tuple[str, str]]] = {}
    for bind, path in fields.items():
        by_name.setdefault(path.rpartition(".")[2], []).append(bind)
    return {name: tuple(binds) for name, binds in by_name.items()}


def _params(fields: Mapping[tuple[str, str], str], declared: list[Param]) -> tuple[Param, ...]:
    binds = _binds(fields)
    return tuple(dataclasses.replace(p, binds=binds.get(p.name, ())) for p in declared)


def _text(name: str, description: str, *, required: bool = False, default: str = "") -> Param:
    return Param(
        name=name,
        type="string",
        description=description,
        required=required,
        default=None if required else default,
    )


def _int(name: str, default: int, low: int, high: int, description: str) -> Param:
    return Param(name=name, type="int", default=default, min=low, max=high, description=description)


def _float(name: str, default: float, low: float, high: float, description: str) -> Param:
    return Param(
        name=name, type="float", default=default, min=low, max=high, description=description
    )


def _model(name: str, folder: str, default: str, description: str) -> Param:
    return Param(name=name, type="model", folder=folder, default=default, description=description)


_COMMON = [
    _text("prompt", "What to draw", required=True),
    _text("negative_prompt", "What to avoid"),
    _int("steps", 20, 1, 200, "Sampling steps"),
    _float("cfg", 7.0, 0.0, 100.0, "Classifier-free guidance scale"),
    Param(name="seed", type="seed", description="Noise seed; random when not given"),
    _text("scheduler", "KSampler scheduler", default="normal"),
]


def _build_image(job_id: str, values: Mapping[str, Any], field: str) -> dict[str, Any]:
    return text_to_image_graph(job_id, TextToImageParams(**values), field)


def _build_video(job_id: str, values: Mapping[str, Any], field: str) -> dict[str, Any]:
    return video_graph(job_id, VideoParams(**values), field)


TEXT_TO_IMAGE = Template(
    name="text-to-image",
    version=BUILTIN_VERSION,
    description="Text to image with one checkpoint (KSampler, VAE decode, SaveImage)",
    params=_params(
        TEXT_TO_IMAGE_FIELDS,
        [
            *_COMMON,
            _int("width", 1024, 64, 4096, "Width in pixels, a multiple of 8"),
            _int("height", 1024, 64, 4096, "Height in pixels, a multiple of 8"),
            _int("batch_size", 1, 1, 16, "Images per job"),
            _text("sampler", "KSampler sampler", default="euler"),
            _model("checkpoint", "checkpoints", DEFAULT_IMAGE_CHECKPOINT, "Checkpoint file"),
        ],
    ),
    builder=_build_image,
    workflow=text_to_image_graph("example", TextToImageParams(prompt="example")),
)

VIDEO = Template(
    name="video",
    version=BUILTIN_VERSION,
    description="AnimateDiff text to video (AnimateDiff-Evolved Gen2, VideoHelperSuite combine)",
    params=_params(
        VIDEO_FIELDS,
        [
            *_COMMON,
            _int("frames", 16, 8, 32, "Number of frames"),
            _float("fps", 8.0, 0.0, 60.0, "Frames per second, above 0"),
            _int("width", 512, 64, 1024, "Frame width, a multiple of 8"),
            _int("height", 512, 64, 1024, "Frame height, a multiple of 8"),
            _text("sampler", "KSampler sampler", default="euler_ancestral"),
            _model("checkpoint", "checkpoints", DEFAULT_VIDEO_CHECKPOINT, "SD1.5 checkpoint"),
            _model("motion_module", "animatediff_models", DEFAULT_MOTION_MODULE, "Motion module"),
            Param(
                name="format",
                type="enum",
                values=tuple(VIDEO_FORMATS),
                default="video/h264-mp4",
                description="Output format",
            ),
        ],
    ),
    builder=_build_video,
    workflow=video_graph("example", VideoParams(prompt="example")),
)

BUILTINS = (TEXT_TO_IMAGE, VIDEO)

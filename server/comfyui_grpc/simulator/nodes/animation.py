"""AnimateDiff-Evolved and VideoHelperSuite stand-ins.

The AnimateDiff nodes only pass handles along (the latent batch size is the
frame count); VHS_VideoCombine spends one step duration per frame, reports one
``progress`` per frame, and writes a real video plus its workflow PNG, with
VHS's own naming (``<prefix>_00001.mp4``) and ``gifs`` UI output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .. import media
from ..files import vhs_target
from .base import NodeContext, NodeDef, NodeOutput
from .encoders import webm
from .savers import clip_frames, still_png, write_file
from .values import Handle, Images


async def load_motion_model(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    return NodeOutput((Handle("MOTION_MODEL_ADE", str(inputs["model_name"])),))


async def apply_motion_model(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    motion: Handle = inputs["motion_model"]
    return NodeOutput((Handle("M_MODELS", motion.name),))


async def use_evolved_sampling(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    model: Handle = inputs["model"]
    return NodeOutput((Handle("MODEL", f"{model.name}+animatediff"),))


async def loader_gen1(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    model: Handle = inputs["model"]
    return NodeOutput((Handle("MODEL", f"{model.name}+{inputs['model_name']}"),))


def _encode(fmt: str, frames: list[media.Frame], fps: float) -> tuple[str, bytes]:
    """File extension and bytes for a VHS ``format`` value."""
    if fmt in ("image/gif", "video/ffmpeg-gif"):
        return "gif", media.gif(frames, fps)
    if fmt == "image/webp":
        return "webp", media.animated_webp(frames, fps)
    if fmt in ("video/webm", "video/av1-webm"):
        return "webm", webm(frames, fps, "av1" if "av1" in fmt else "vp9")
    if fmt.endswith("-mp4"):
        return "mp4", media.h264_mp4(frames, fps)
    raise ValueError(f"the simulator does not write VHS format {fmt!r}")


async def video_combine(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    images: Images = inputs["images"]
    fps = float(inputs["frame_rate"])
    fmt = str(inputs["format"])
    if bool(inputs.get("pingpong")):
        pictures = images.pictures + images.pictures[-2:0:-1]
        images = Images(images.width, images.height, pictures)
    save_output = bool(inputs.get("save_output", True))
    base = ctx.folders.output if save_output else ctx.folders.temp
    target = vhs_target(base, str(inputs["filename_prefix"]))
    frames = await asyncio.to_thread(clip_frames, images)
    for index in range(len(frames)):
        await ctx.sleep(ctx.step_seconds())
        await ctx.progress(index + 1, len(frames))
    ext, data = await asyncio.to_thread(_encode, fmt, frames, fps)
    stem = f"{target.name}_{target.counter:05}"
    workflow = f"{stem}.png"
    await write_file(target.folder / workflow, await asyncio.to_thread(still_png, images, 0))
    video_path = target.folder / f"{stem}.{ext}"
    await write_file(video_path, data)
    entry = {
        "filename": video_path.name,
        "subfolder": target.subfolder,
        "type": "output" if save_output else "temp",
        "format": fmt,
        "frame_rate": fps,
        "workflow": workflow,
        "fullpath": str(video_path),
    }
    return NodeOutput(
        ((save_output, [str(target.folder / workflow), str(video_path)]),), {"gifs": [entry]}
    )


DEFINITIONS = (
    NodeDef(
        "ADE_AnimateDiffLoaderGen1", loader_gen1, dynamic_combos={"model_name": "motion_modules"}
    ),
    NodeDef(
        "ADE_LoadAnimateDiffModel",
        load_motion_model,
        dynamic_combos={"model_name": "motion_modules"},
    ),
    NodeDef("ADE_ApplyAnimateDiffModel", apply_motion_model),
    NodeDef("ADE_ApplyAnimateDiffModelSimple", apply_motion_model),
    NodeDef("ADE_UseEvolvedSampling", use_evolved_sampling),
    NodeDef("VHS_VideoCombine", video_combine),
)

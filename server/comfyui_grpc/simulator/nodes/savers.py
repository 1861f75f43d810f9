"""Nodes that write files or send images: real PNG/WebP/APNG/MP4/WebM output.

File contents come from the seeds carried by the image batch, so the same
graph and seed always give the same bytes. Encoding runs in a worker thread so
a large clip does not stall the event loop (and with it the WebSocket).
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import media
from ..files import comfy_target
from .base import NodeContext, NodeDef, NodeOutput, Preview
from .encoders import webm
from .values import Images, Video


def still_png(images: Images, index: int) -> bytes:
    picture = images.pictures[index]
    return media.png_image(images.width, images.height, picture.seed, picture.variant)


def clip_frames(images: Images) -> list[media.Frame]:
    """Frame ``i`` of a clip is picture ``i`` at motion step ``i``."""
    return [
        media.render_frame(images.width, images.height, p.seed, variant=0, index=i)
        for i, p in enumerate(images.pictures)
    ]


async def write_file(path: Path, data: bytes) -> None:
    await asyncio.to_thread(path.write_bytes, data)


async def _save_stills(
    ctx: NodeContext, images: Images, base: Path, prefix: str, kind: str
) -> NodeOutput:
    target = comfy_target(base, prefix)
    results = []
    for index in range(images.count):
        filename = f"{target.name}_{target.counter + index:05}_.png"
        data = await asyncio.to_thread(still_png, images, index)
        await write_file(target.folder / filename, data)
        results.append({"filename": filename, "subfolder": target.subfolder, "type": kind})
    return NodeOutput((), {"images": results})


async def save_image(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    prefix = str(inputs["filename_prefix"])
    return await _save_stills(ctx, inputs["images"], ctx.folders.output, prefix, "output")


async def preview_image(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    # ComfyUI names previews ComfyUI_temp_<5 random letters>_00001_.png in temp/.
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    prefix = f"ComfyUI_temp_{suffix}"
    return await _save_stills(ctx, inputs["images"], ctx.folders.temp, prefix, "temp")


async def save_image_websocket(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    images: Images = inputs["images"]
    for index in range(images.count):
        data = await asyncio.to_thread(still_png, images, index)
        await ctx.progress(index, images.count, Preview("PNG", data))
    return NodeOutput(())


async def _save_animation(
    ctx: NodeContext, inputs: Mapping[str, Any], images: Images, ext: str, data: bytes
) -> NodeOutput:
    target = comfy_target(ctx.folders.output, str(inputs["filename_prefix"]))
    filename = f"{target.name}_{target.counter:05}_.{ext}"
    await write_file(target.folder / filename, data)
    entry = {"filename": filename, "subfolder": target.subfolder, "type": "output"}
    return NodeOutput((), {"images": [entry], "animated": [True]})


async def save_animated_webp(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    images: Images = inputs["images"]
    frames = await asyncio.to_thread(clip_frames, images)
    data = await asyncio.to_thread(
        media.animated_webp,
        frames,
        float(inputs["fps"]),
        lossless=bool(inputs["lossless"]),
        quality=int(inputs["quality"]),
    )
    return await _save_animation(ctx, inputs, images, "webp", data)


async def save_animated_png(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    images: Images = inputs["images"]
    frames = await asyncio.to_thread(clip_frames, images)
    data = await asyncio.to_thread(media.animated_png, frames, float(inputs["fps"]))
    return await _save_animation(ctx, inputs, images, "png", data)


async def create_video(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    return NodeOutput((Video(inputs["images"], float(inputs["fps"])),))


async def save_video(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    video: Video = inputs["video"]
    frames = await asyncio.to_thread(clip_frames, video.images)
    data = await asyncio.to_thread(media.h264_mp4, frames, video.fps)
    return await _save_animation(ctx, inputs, video.images, "mp4", data)


async def save_webm(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    images: Images = inputs["images"]
    frames = await asyncio.to_thread(clip_frames, images)
    data = await asyncio.to_thread(webm, frames, float(inputs["fps"]), str(inputs["codec"]))
    return await _save_animation(ctx, inputs, images, "webm", data)


DEFINITIONS = (
    NodeDef("SaveImage", save_image),
    NodeDef("PreviewImage", preview_image),
    NodeDef("SaveImageWebsocket", save_image_websocket),
    NodeDef("SaveAnimatedWEBP", save_animated_webp),
    NodeDef("SaveAnimatedPNG", save_animated_png),
    NodeDef("CreateVideo", create_video),
    NodeDef("SaveVideo", save_video),
    NodeDef("SaveWEBM", save_webm),
)

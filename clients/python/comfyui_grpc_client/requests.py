"""Builders for ``GenerateRequest``: keyword arguments in, proto out.

Zero or None means "server default", so callers only name what they care
about and the documented defaults live in one place (the server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from comfyui_grpc.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2

from .models import VideoFormat


def image_request(
    prompt: str,
    *,
    negative_prompt: str = "",
    width: int = 0,
    height: int = 0,
    steps: int = 0,
    cfg: float | None = None,
    seed: int | None = None,
    sampler: str = "",
    scheduler: str = "",
    checkpoint: str = "",
    batch_size: int = 0,
) -> pb.GenerateRequest:
    """A text-to-image request; unset values take the server's defaults."""
    image = pb.TextToImage(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        steps=steps,
        sampler=sampler,
        scheduler=scheduler,
        checkpoint=checkpoint,
        batch_size=batch_size,
    )
    if cfg is not None:
        image.cfg = cfg
    if seed is not None:
        image.seed = seed
    return pb.GenerateRequest(text_to_image=image)


def video_request(
    prompt: str,
    *,
    negative_prompt: str = "",
    frames: int = 0,
    fps: float | None = None,
    width: int = 0,
    height: int = 0,
    steps: int = 0,
    cfg: float | None = None,
    seed: int | None = None,
    format: VideoFormat | None = None,
    motion_module: str = "",
    checkpoint: str = "",
    sampler: str = "",
    scheduler: str = "",
) -> pb.GenerateRequest:
    """An AnimateDiff text-to-video request; unset values take the server's defaults."""
    video = pb.Video(
        prompt=prompt,
        negative_prompt=negative_prompt,
        frames=frames,
        width=width,
        height=height,
        steps=steps,
        motion_module=motion_module,
        checkpoint=checkpoint,
        sampler=sampler,
        scheduler=scheduler,
    )
    if fps is not None:
        video.fps = fps
    if cfg is not None:
        video.cfg = cfg
    if seed is not None:
        video.seed = seed
    if format is not None:
        video.format = int(format)  # type: ignore[assignment]
    return pb.GenerateRequest(video=video)


def workflow_request(graph: Mapping[str, Any] | str) -> pb.GenerateRequest:
    """A raw ComfyUI API-format workflow, as a mapping or a JSON string.

    A string is sent as ``workflow_json`` so integers beyond 2**53 (seeds)
    survive; a mapping goes through ``Struct``.
    """
    if isinstance(graph, str):
        json.loads(graph)  # fail here, with the caller's stack, on bad JSON
        return pb.GenerateRequest(workflow_json=graph)
    struct = struct_pb2.Struct()
    struct.update(dict(graph))
    return pb.GenerateRequest(workflow=struct)

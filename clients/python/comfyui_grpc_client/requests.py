"""Builders for ``GenerateRequest``: keyword arguments in, proto out.

Zero or None means "server default", so callers only name what they care
about and the documented defaults live in one place (the server).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfyui_grpc.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2

from .models import Artifact, UploadedInput, VideoFormat

MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024
"""The gateway's limit on an image sent inside a request (``{"bytes": ...}``)."""

MAX_EXACT_INTEGER = 2**53
"""A ``Struct`` carries numbers as doubles: larger whole numbers would change."""


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


def template_value(name: str, value: Any) -> Any:
    """One template parameter's value as the API takes it.

    * a :class:`~pathlib.Path` (any ``os.PathLike``) is read and sent inline
      as ``{"bytes": "<base64>"}``, and so are ``bytes``;
    * an :class:`~.models.Artifact` (an earlier job's output) becomes
      ``{"artifact": {"job_id": ..., "key": ...}}``;
    * an :class:`~.models.UploadedInput` becomes its ``image`` name;
    * a ``str`` is sent as is: for an image parameter, the ``image`` name
      ``upload_input`` returned (never a local path: wrap those in ``Path``);
    * numbers, bools, ``None``, lists and dicts are sent as JSON values.
    """
    if isinstance(value, os.PathLike):
        path = Path(value)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ValueError(f"template parameter {name}: cannot read {path}: {exc}") from exc
        _check_inline(name, size, str(path))
        return {"bytes": base64.b64encode(path.read_bytes()).decode("ascii")}
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        _check_inline(name, len(data), "the bytes")
        return {"bytes": base64.b64encode(data).decode("ascii")}
    if isinstance(value, Artifact):
        return {"artifact": {"job_id": value.job_id, "key": value.key}}
    if isinstance(value, UploadedInput):
        return value.image
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INTEGER:
        raise ValueError(
            f"template parameter {name}: {value} is beyond 2**53, which a request's "
            "parameters (JSON numbers) cannot carry exactly"
        )
    if value is None or isinstance(value, str | int | float | Mapping | list | tuple):
        return value
    raise TypeError(
        f"template parameter {name}: a {type(value).__name__} is not a value a template "
        "takes (use str, a number, bool, Path, bytes, Artifact or UploadedInput)"
    )


def _check_inline(name: str, size: int, what: str) -> None:
    if size > MAX_INLINE_IMAGE_BYTES:
        raise ValueError(
            f"template parameter {name}: {what} is {size} bytes, over the "
            f"{MAX_INLINE_IMAGE_BYTES} sent inline; upload it with upload_input() and "
            "pass the returned UploadedInput (or its image name)"
        )


def template_request(
    name: str, version: int = 0, params: Mapping[str, Any] | None = None
) -> pb.GenerateRequest:
    """A run of a named template (see ``ListTemplates``); ``version`` 0 is the
    newest. Values are converted by :func:`template_value`; unset parameters
    take the template's defaults."""
    if not name:
        raise ValueError("name the template (list_templates() shows them)")
    if version < 0:
        raise ValueError(f"version must not be negative (got {version})")
    struct = struct_pb2.Struct()
    struct.update({key: template_value(key, value) for key, value in (params or {}).items()})
    return pb.GenerateRequest(
        template=pb.TemplateRequest(name=name, version=version, params=struct)
    )

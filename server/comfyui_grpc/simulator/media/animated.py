"""Animated WebP, APNG and GIF through Pillow, the way ComfyUI's own save nodes do it."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .frames import Frame

__all__ = ["animated_png", "animated_webp", "gif"]


def _frame_ms(fps: float) -> int:
    """Per-frame duration in whole milliseconds, the unit all three formats share."""
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return max(1, round(1000 / fps))


def _images(frames: Sequence[Frame], fps: float) -> list[Image.Image]:
    """Validate the clip (before any costly work) and wrap frames as Pillow images."""
    _frame_ms(fps)
    if not frames:
        raise ValueError("an animation needs at least one frame")
    width, height = frames[0].width, frames[0].height
    for frame in frames:
        if (frame.width, frame.height) != (width, height):
            raise ValueError(
                f"all frames must be {width}x{height}, got {frame.width}x{frame.height}"
            )
    return [Image.frombytes("RGB", (width, height), frame.rgb) for frame in frames]


def _save(images: list[Image.Image], fps: float, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    images[0].save(
        out,
        format=image_format,
        save_all=True,
        append_images=images[1:],
        duration=_frame_ms(fps),
        loop=0,
        **options,
    )
    return out.getvalue()


def animated_webp(
    frames: Sequence[Frame], fps: float, *, lossless: bool = False, quality: int = 80
) -> bytes:
    """Animated WebP; method 0 because the simulator values speed over file size.

    Like any WebP animation encoder, identical consecutive frames may be merged.
    """
    return _save(_images(frames, fps), fps, "WEBP", lossless=lossless, quality=quality, method=0)


def animated_png(frames: Sequence[Frame], fps: float) -> bytes:
    """APNG; compress_level 1 keeps big clips fast (identical frames are merged by Pillow)."""
    return _save(_images(frames, fps), fps, "PNG", compress_level=1)


def gif(frames: Sequence[Frame], fps: float) -> bytes:
    """Animated GIF, one 256-colour palette per frame; GIF rounds delays to 10 ms.

    Frames are quantized with the fast octree first: left to Pillow, RGB
    frames go through median cut, which is about 15 times slower and no better
    on smooth gradients.
    """
    images = [
        image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        for image in _images(frames, fps)
    ]
    return _save(images, fps, "GIF")

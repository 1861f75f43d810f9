"""Synthetic RGB frames: deterministic per seed, cheap to make, visibly moving.

The simulator stands in for diffusion models, so its pictures only need to be
real, reproducible and obviously different between seeds and between frames.
Every frame is a seeded colour gradient (horizontal, vertical and diagonal
ramps, one per channel) plus a moving band. All work is done with whole-row
``bytes`` operations so a 1024x1024 frame costs a few milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Frame", "frames_for", "iter_frames", "render_frame"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One RGB picture: 8 bits per channel, row-major, no padding."""

    width: int
    height: int
    rgb: bytes  # width * height * 3 bytes

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        expected = self.width * self.height * 3
        if len(self.rgb) != expected:
            raise ValueError(
                f"a {self.width}x{self.height} RGB frame needs {expected} bytes, "
                f"got {len(self.rgb)}"
            )


def _digest(seed: int, variant: int) -> bytes:
    """Seed material for one picture; a hash keeps it stable across Python versions."""
    return hashlib.sha256(f"comfyui-grpc/simulator/{seed}/{variant}".encode()).digest()


def _pair(start: int, spread: int) -> tuple[int, int]:
    """Two channel levels at least 96 apart, so every gradient is visible."""
    return start, (start + 96 + spread % 64) % 256


def _triangle(length: int, low: int, high: int) -> bytes:
    """A ramp low -> high -> low over ``length``: seamless when rotated."""
    return bytes(
        low + (high - low) * (length - abs(2 * i - length)) // length for i in range(length)
    )


def _ramp(length: int, low: int, high: int) -> bytes:
    span = max(length - 1, 1)
    return bytes(low + (high - low) * i // span for i in range(length))


class _Painter:
    """Precomputed rows for one (size, seed, variant); frames only rotate and stack them."""

    def __init__(self, width: int, height: int, seed: int, variant: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        d = _digest(seed, variant)
        self.width = width
        self.height = height
        self.red = _triangle(width, *_pair(d[0], d[1]))
        self.green = _triangle(height, *_pair(d[2], d[3]))
        self.blue = _ramp(width + height - 1, *_pair(d[4], d[5]))
        self.band = bytes(d[6:9]) * width
        # Even rows and thickness: 4:2:0 video averages colour over 2x2 pixels,
        # so a band edge inside such a block would smear in every encoded clip.
        self.band_rows = max(2, height // 10 & ~1)
        self.phase_x = int.from_bytes(d[9:12], "big") % width
        self.phase_y = int.from_bytes(d[12:15], "big") % height
        self.phase_band = int.from_bytes(d[15:18], "big") % height
        # Fixed speeds (not "one loop per clip") so consecutive frames differ
        # however long the clip (only toy sizes such as 2x2 can repeat).
        self.step_x = max(1, width // 24)
        self.step_y = max(1, height // 32)
        self.step_band = max(1, height // 12)
        # The diagonal blue plane never moves: build it once.
        self.blue_plane = b"".join(self.blue[y : y + width] for y in range(height))
        self.level_rows: dict[int, bytes] = {}

    def paint(self, index: int) -> Frame:
        w, h = self.width, self.height
        sx = (self.phase_x + index * self.step_x) % w
        red_row = self.red[sx:] + self.red[:sx]
        sy = (self.phase_y + index * self.step_y) % h
        green_column = self.green[sy:] + self.green[:sy]
        rows = self.level_rows
        for level in set(green_column) - rows.keys():
            rows[level] = bytes((level,)) * w
        pixels = bytearray(w * h * 3)
        pixels[0::3] = red_row * h
        pixels[1::3] = b"".join([rows[level] for level in green_column])
        pixels[2::3] = self.blue_plane
        top = (self.phase_band + index * self.step_band) % h & ~1
        stride = w * 3
        for y in range(top, top + self.band_rows):
            row = y % h
            pixels[row * stride : (row + 1) * stride] = self.band
        return Frame(w, h, bytes(pixels))


def render_frame(width: int, height: int, seed: int, variant: int = 0, index: int = 0) -> Frame:
    """One picture; ``variant`` picks the palette (batch item), ``index`` the motion step."""
    return _Painter(width, height, seed, variant).paint(index)


def iter_frames(width: int, height: int, count: int, seed: int) -> Iterator[Frame]:
    """The frames of :func:`frames_for`, made lazily so long clips can be streamed."""
    if count < 0:
        raise ValueError(f"frame count must not be negative, got {count}")
    painter = _Painter(width, height, seed, 0)
    return (painter.paint(i) for i in range(count))


def frames_for(width: int, height: int, count: int, seed: int) -> list[Frame]:
    """``count`` frames of a clip: same palette, band and gradient moving every frame."""
    return list(iter_frames(width, height, count, seed))

"""Still PNG images written with zlib only, so output bytes never depend on Pillow."""

from __future__ import annotations

import struct
import zlib

from .frames import Frame, render_frame

__all__ = ["encode_png", "png_image"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(frame: Frame, level: int = 6) -> bytes:
    """Encode an RGB frame as an 8-bit truecolour PNG (filter type 0 on every row)."""
    stride = frame.width * 3
    view = memoryview(frame.rgb)
    # Each scanline is prefixed with its filter byte (0 = None); joining on that
    # byte does it in C instead of a per-row Python concatenation.
    raw = b"\x00" + b"\x00".join([view[y * stride : (y + 1) * stride] for y in range(frame.height)])
    header = struct.pack(">IIBBBBB", frame.width, frame.height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, level)),
            _chunk(b"IEND", b""),
        )
    )


def png_image(width: int, height: int, seed: int, batch_index: int = 0) -> bytes:
    """The simulated output of one batch item: a seeded gradient, same bytes for same inputs."""
    return encode_png(render_frame(width, height, seed, variant=batch_index))

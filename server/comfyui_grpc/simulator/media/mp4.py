"""An ISO BMFF (MP4) muxer for one H.264 video track, streaming to a seekable file.

Layout: ``ftyp``, ``mdat`` (64-bit size, patched when the samples are done),
then ``moov``. Writing ``moov`` last means only the per-sample sizes (4 bytes a
frame) stay in memory, so hundreds of megabytes of video need about one frame
of RAM. Every sample is its own chunk and a sync sample.
"""

from __future__ import annotations

import io
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

from .frames import Frame
from .h264 import BT601, H264Encoder

__all__ = ["h264_mp4", "write_h264_mp4"]

_U32 = 0xFFFF_FFFF
_MAX_FPS = 1000.0
# Identity transformation matrix of mvhd/tkhd (16.16 and 2.30 fixed point).
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_FTYP_BRANDS = (b"isom", b"iso2", b"avc1", b"mp41")
_COMPRESSOR = b"comfyui-grpc simulator"


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _big_endian(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _time_base(fps: float) -> tuple[int, int]:
    """(timescale, sample delta) with timescale / delta == fps as an exact fraction.

    A denominator limit of 1001 keeps NTSC rates such as 30000/1001 exact.
    """
    if not math.isfinite(fps) or fps <= 0 or fps > _MAX_FPS:
        raise ValueError(f"fps must be in (0, {_MAX_FPS:g}], got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small to represent")
    return rate.numerator, rate.denominator


def _versioned_times(duration: int) -> tuple[int, bytes]:
    """mvhd/mdhd creation, modification (0: keeps output deterministic) and duration."""
    if duration > _U32:
        return 1, struct.pack(">QQ", 0, 0)
    return 0, struct.pack(">II", 0, 0)


def _moov(encoder: H264Encoder, sizes: array[int], first_offset: int, fps: float) -> bytes:
    timescale, delta = _time_base(fps)
    count = len(sizes)
    duration = count * delta
    version, times = _versioned_times(duration)
    duration_field = struct.pack(">Q" if version else ">I", duration)
    width, height = encoder.width, encoder.height

    mvhd = _full_box(
        b"mvhd",
        version,
        0,
        times,
        struct.pack(">I", timescale),
        duration_field,
        struct.pack(">IH10x", 0x10000, 0x100),  # rate 1.0, volume 1.0, reserved
        _MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = _full_box(
        b"tkhd",
        version,
        0x3,  # track enabled, in movie
        times,
        struct.pack(">II", 1, 0),  # track_ID, reserved
        duration_field,
        struct.pack(">8xhhhH", 0, 0, 0, 0),  # reserved, layer, group, volume, reserved
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd",
        version,
        0,
        times,
        struct.pack(">I", timescale),
        duration_field,
        struct.pack(">HH", 0x55C4, 0),  # language "und", pre_defined
    )
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, bytes(8))  # graphicsmode copy, opcolor 0
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))

    avcc = _box(
        b"avcC",
        bytes((1, encoder.profile, encoder.constraint_flags, encoder.level)),
        b"\xff",  # 4-byte NAL unit lengths
        b"\xe1",  # one SPS
        struct.pack(">H", len(encoder.sps)),
        encoder.sps,
        b"\x01",  # one PPS
        struct.pack(">H", len(encoder.pps)),
        encoder.pps,
    )
    colr = _box(b"colr", b"nclx", struct.pack(">HHHB", BT601, BT601, BT601, 0))
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined, reserved
        struct.pack(">HHIII", width, height, 0x480000, 0x480000, 0),  # 72 dpi
        struct.pack(">H", 1),  # frame_count
        bytes((len(_COMPRESSOR),)) + _COMPRESSOR.ljust(31, b"\x00"),
        struct.pack(">Hh", 0x18, -1),  # depth, pre_defined
        avcc,
        colr,
    )
    stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1)
    stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, count, delta))
    sync = array("I", range(1, count + 1))  # every sample is an IDR picture
    stss = _full_box(b"stss", 0, 0, struct.pack(">I", count), _big_endian(sync))
    stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1))
    if min(sizes) == max(sizes):
        stsz = _full_box(b"stsz", 0, 0, struct.pack(">II", sizes[0], count))
    else:
        stsz = _full_box(b"stsz", 0, 0, struct.pack(">II", 0, count), _big_endian(sizes))
    offsets = array("Q", [first_offset])
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    if offsets[-1] > _U32:
        chunk_offsets = _full_box(b"co64", 0, 0, struct.pack(">I", count), _big_endian(offsets))
    else:
        chunk_offsets = _full_box(
            b"stco", 0, 0, struct.pack(">I", count), _big_endian(array("I", offsets))
        )
    del offsets
    stbl = _box(b"stbl", stsd, stts, stss, stsc, stsz, chunk_offsets)
    minf = _box(b"minf", vmhd, dinf, stbl)
    mdia = _box(b"mdia", mdhd, hdlr, minf)
    trak = _box(b"trak", tkhd, mdia)
    return _box(b"moov", mvhd, trak)


def _write(out: BinaryIO, frames: Iterable[Frame], fps: float) -> int:
    """Mux ``frames`` into ``out`` (positioned at 0, seekable); returns bytes written."""
    _time_base(fps)  # fail before writing anything
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), *_FTYP_BRANDS)
    out.write(ftyp)
    mdat_at = len(ftyp)
    out.write(struct.pack(">I4sQ", 1, b"mdat", 0))  # size 1: 64-bit largesize follows
    first_offset = mdat_at + 16
    sizes = array("I")
    encoder: H264Encoder | None = None
    for frame in frames:
        if encoder is None:
            encoder = H264Encoder(frame.width, frame.height, fps)
        size, chunks = encoder.encode_chunks(frame)
        out.write(struct.pack(">I", size))
        for chunk in chunks:
            out.write(chunk)
        sizes.append(size + 4)
    if encoder is None:
        raise ValueError("a video needs at least one frame")
    end = first_offset + sum(sizes)
    out.seek(mdat_at + 8)
    out.write(struct.pack(">Q", end - mdat_at))
    out.seek(end)
    moov = _moov(encoder, sizes, first_offset, fps)
    out.write(moov)
    return end + len(moov)


def write_h264_mp4(path: Path, frames: Iterable[Frame], fps: float) -> int:
    """Stream frames into an H.264 MP4 file at ``path``; returns its size in bytes.

    Frames are consumed one at a time, so a generator keeps memory flat. On
    failure the partial file is removed rather than left behind unplayable.
    """
    try:
        with path.open("wb") as out:
            return _write(out, frames, fps)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def h264_mp4(frames: Sequence[Frame], fps: float) -> bytes:
    """The same MP4 as :func:`write_h264_mp4`, in memory (for small clips)."""
    out = io.BytesIO()
    _write(out, frames, fps)
    return out.getvalue()

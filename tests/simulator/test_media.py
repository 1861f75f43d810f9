"""The simulator's media writers produce real files that independent decoders accept.

PyAV (FFmpeg) is the reference decoder for H.264/MP4, APNG and GIF; FFmpeg
cannot decode animated WebP, so each WebP frame's bitstream is cut out and
decoded by FFmpeg as a still image, while Pillow checks the animation itself.
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import tracemalloc
from array import array
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from comfyui_grpc.simulator.media import (
    Frame,
    H264Encoder,
    animated_png,
    animated_webp,
    encode_png,
    frames_for,
    gif,
    h264_mp4,
    iter_frames,
    png_image,
    render_frame,
    write_h264_mp4,
)
from comfyui_grpc.simulator.media.h264 import _Bits, escape_rbsp
from comfyui_grpc.simulator.media.mp4 import _moov
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

# -- helpers -------------------------------------------------------------------


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> Frame:
    return Frame(width, height, bytes(rgb) * (width * height))


def smooth(width: int, height: int) -> Frame:
    """Gentle gradients: unlike seeded frames at tiny sizes, 4:2:0 keeps them near exact."""
    rgb = bytes(
        value
        for y in range(height)
        for x in range(width)
        for value in (40 + 3 * x, 200 - 3 * y, 60 + 2 * (x + y))
    )
    return Frame(width, height, rgb)


def crop(frame: Frame, width: int, height: int) -> bytes:
    """The top-left width x height pixels (what a 4:2:0 video keeps of odd sizes)."""
    stride = frame.width * 3
    return b"".join(frame.rgb[y * stride : y * stride + width * 3] for y in range(height))


def mean_abs_error(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def decode_video(data: bytes) -> tuple[av.video.stream.VideoStream, list[Image.Image]]:
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        images = [frame.to_image() for frame in container.decode(stream)]
    return stream, images


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        assert size >= header, kind
        yield kind, start + header, start + size
        start += size
    assert start == end


def find_box(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> bytes:
    for kind, body, stop in boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return data[body:stop]
            return find_box(data, path[1:], body, stop)
    raise AssertionError(f"no {path[0]!r} box")


# -- frames ----------------------------------------------------------------------


def test_frames_are_deterministic_per_seed() -> None:
    assert frames_for(48, 32, 3, seed=7) == frames_for(48, 32, 3, seed=7)
    assert frames_for(48, 32, 3, seed=7) != frames_for(48, 32, 3, seed=8)
    assert list(iter_frames(48, 32, 3, seed=7)) == frames_for(48, 32, 3, seed=7)


def test_every_frame_differs_from_the_previous_one() -> None:
    clip = frames_for(64, 48, 40, seed=1)
    for before, after in itertools.pairwise(clip):
        assert before.rgb != after.rgb
    assert all((f.width, f.height, len(f.rgb)) == (64, 48, 64 * 48 * 3) for f in clip)


def test_frames_are_not_flat() -> None:
    rgb = render_frame(64, 64, seed=3).rgb
    for channel in range(3):
        values = rgb[channel::3]
        assert max(values) - min(values) >= 90  # gradients span at least ~96 levels


def test_huge_and_negative_seeds_work() -> None:
    assert frames_for(8, 8, 1, seed=2**64 - 1) != frames_for(8, 8, 1, seed=-1)


def test_frame_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="needs 12 bytes"):
        Frame(2, 2, b"\x00" * 11)
    with pytest.raises(ValueError, match="positive"):
        Frame(0, 2, b"")
    with pytest.raises(ValueError, match="negative"):
        frames_for(8, 8, -1, seed=0)
    assert frames_for(8, 8, 0, seed=0) == []


# -- PNG -----------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (3, 5), (64, 48), (333, 17)])
def test_png_decodes_to_the_exact_pixels(width: int, height: int) -> None:
    data = png_image(width, height, seed=5, batch_index=2)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (width, height))
    assert image.tobytes() == render_frame(width, height, seed=5, variant=2).rgb
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs


def test_png_is_deterministic_and_seeded() -> None:
    base = png_image(32, 32, seed=1)
    assert png_image(32, 32, seed=1) == base
    assert png_image(32, 32, seed=1, batch_index=0) == base
    assert png_image(32, 32, seed=2) != base
    assert png_image(32, 32, seed=1, batch_index=1) != base
    assert base == encode_png(frames_for(32, 32, 1, seed=1)[0])


def test_png_decodes_with_ffmpeg_too() -> None:
    frame = render_frame(40, 30, seed=9)
    stream, images = decode_video(encode_png(frame))
    assert stream.codec_context.name == "png"
    assert [image.convert("RGB").tobytes() for image in images] == [frame.rgb]


def test_png_1024_is_fast() -> None:
    png_image(64, 64, seed=0)  # warm up
    start = time.perf_counter()
    data = png_image(1024, 1024, seed=0)
    elapsed = time.perf_counter() - start
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)
    assert elapsed < 0.6, f"1024x1024 PNG took {elapsed:.3f}s"  # ~0.04 s measured


# -- H.264 bitstream pieces ------------------------------------------------------------


def bits_of(write: list[tuple[str, int]]) -> str:
    bits = _Bits()
    for kind, value in write:
        getattr(bits, kind)(value)
    return format(bits.value, f"0{bits.count}b")


def test_exp_golomb_codes() -> None:
    assert bits_of([("ue", 0)]) == "1"
    assert bits_of([("ue", 1)]) == "010"
    assert bits_of([("ue", 7)]) == "0001000"
    assert bits_of([("ue", 25)]) == "000011010"  # I_PCM
    assert bits_of([("se", 1)]) == "010"
    assert bits_of([("se", -1)]) == "011"
    assert bits_of([("se", 0)]) == "1"


@pytest.mark.parametrize(
    ("rbsp", "nal"),
    [
        (b"\x00\x00\x01", b"\x00\x00\x03\x01"),
        (b"\x00\x00\x00\x01", b"\x00\x00\x03\x00\x01"),
        (b"\x00\x00\x02\x00\x00\x03", b"\x00\x00\x03\x02\x00\x00\x03\x03"),
        (b"\x00\x00\x04\x00\x00", b"\x00\x00\x04\x00\x00"),
        (b"\x00\x00\x00\x00\x00", b"\x00\x00\x03\x00\x00\x03\x00"),
        (b"\x10\x00\x10", b"\x10\x00\x10"),
    ],
)
def test_emulation_prevention_examples(rbsp: bytes, nal: bytes) -> None:
    assert escape_rbsp(rbsp) == nal


@given(st.binary(max_size=64).map(lambda b: b.replace(b"\x01", b"\x00") + b"\x80"))
def test_emulation_prevention_is_reversible_and_complete(rbsp: bytes) -> None:
    nal = escape_rbsp(rbsp)
    for forbidden in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert forbidden not in nal
    unescaped = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        unescaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    assert bytes(unescaped) == rbsp


def test_slice_size_is_predicted_exactly() -> None:
    encoder = H264Encoder(90, 54, 24.0)
    for frame in frames_for(90, 54, 3, seed=4):
        size, chunks = encoder.encode_chunks(frame)
        assert len(b"".join(chunks)) == size


def test_encoder_rejects_a_frame_of_another_size() -> None:
    encoder = H264Encoder(32, 32, 24.0)
    with pytest.raises(ValueError, match="32x32"):
        encoder.encode(solid(16, 16, (0, 0, 0)))


# -- H.264 in MP4 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "count", "fps"),
    [
        (64, 48, 5, 24.0),
        (90, 54, 3, 12.5),  # cropping on both axes
        (160, 16, 2, 30000 / 1001),  # several macroblocks per row, NTSC rate
        (48, 112, 2, 8.0),
    ],
)
def test_mp4_decodes_with_ffmpeg(width: int, height: int, count: int, fps: float) -> None:
    clip = frames_for(width, height, count, seed=11)
    stream, images = decode_video(h264_mp4(clip, fps))
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.profile == "Constrained Baseline"
    assert (stream.width, stream.height) == (width, height)
    assert stream.frames == count
    assert stream.average_rate == Fraction(fps).limit_denominator(1001)
    assert len(images) == count
    for frame, image in zip(clip, images, strict=True):
        assert image.size == (width, height)
        # 4:2:0 blurs the band's sharp colour edges a little; the rest is near exact.
        assert mean_abs_error(image.tobytes(), frame.rgb) < 4.0


@pytest.mark.parametrize(
    "colour",
    [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 140, 200)],
)
def test_mp4_colours_survive_the_yuv_round_trip(colour: tuple[int, int, int]) -> None:
    _, images = decode_video(h264_mp4([solid(32, 32, colour)], 10.0))
    decoded = images[0].tobytes()
    for channel in range(3):
        values = set(decoded[channel::3])
        assert all(abs(value - colour[channel]) <= 3 for value in values), (colour, values)


def decoded_planes(data: bytes) -> list[bytes]:
    """Y, Cb and Cr of the first picture, without the decoder's row padding."""
    with av.open(io.BytesIO(data), mode="r") as container:
        picture = next(container.decode(video=0))
    assert picture.format.name == "yuv420p"
    planes = []
    for plane in picture.planes:
        raw = bytes(plane)
        step = plane.line_size
        planes.append(b"".join(raw[y * step : y * step + plane.width] for y in range(plane.height)))
    return planes


def test_mp4_samples_follow_bt601_limited_range() -> None:
    frame = render_frame(64, 32, seed=21)
    y_plane, cb_plane, cr_plane = decoded_planes(h264_mp4([frame], 24.0))
    rgb = frame.rgb
    for y in range(32):
        for x in range(64):
            red, green, blue = rgb[(y * 64 + x) * 3 : (y * 64 + x) * 3 + 3]
            expected = 16 + 219 * (0.299 * red + 0.587 * green + 0.114 * blue) / 255
            assert abs(y_plane[y * 64 + x] - expected) <= 1.0, (x, y)
    for y in range(16):
        for x in range(32):
            block = [(y * 2 + dy) * 64 + x * 2 + dx for dy in (0, 1) for dx in (0, 1)]
            r, g, b = (sum(rgb[i * 3 + c] for i in block) / 4 for c in range(3))
            cb = 128 + 224 * (-0.168736 * r - 0.331264 * g + 0.5 * b) / 255
            cr = 128 + 224 * (0.5 * r - 0.418688 * g - 0.081312 * b) / 255
            assert abs(cb_plane[y * 32 + x] - cb) <= 1.0, (x, y)
            assert abs(cr_plane[y * 32 + x] - cr) <= 1.0, (x, y)


def read_ue(bits: str, at: int) -> tuple[int, int]:
    zeros = bits.index("1", at) - at
    end = at + 2 * zeros + 1
    return int(bits[at + zeros : end], 2) - 1, end


def test_consecutive_idr_pictures_have_different_ids() -> None:
    encoder = H264Encoder(16, 16, 24.0)
    ids = []
    for frame in frames_for(16, 16, 4, seed=0):
        nal = encoder.encode(frame)
        assert nal[0] == 0x65  # nal_ref_idc 3, IDR slice
        bits = "".join(format(byte, "08b") for byte in nal[1:8])
        first_mb, at = read_ue(bits, 0)
        slice_type, at = read_ue(bits, at)
        pps_id, at = read_ue(bits, at)
        assert (first_mb, slice_type, pps_id, bits[at : at + 4]) == (0, 7, 0, "0000")
        ids.append(read_ue(bits, at + 4)[0])
    assert all(a != b for a, b in itertools.pairwise(ids)), ids


@pytest.mark.parametrize(("width", "height"), [(17, 9), (1, 1), (33, 2), (2, 33)])
def test_mp4_odd_sizes_lose_the_last_column_or_row(width: int, height: int) -> None:
    frame = smooth(width, height)
    stream, images = decode_video(h264_mp4([frame, frame], 24.0))
    coded = (max(2, width - width % 2), max(2, height - height % 2))
    assert (stream.width, stream.height) == coded
    assert len(images) == 2
    if coded == (width - width % 2, height - height % 2):
        assert mean_abs_error(images[1].tobytes(), crop(frame, *coded)) < 2.0
    else:  # a 1-pixel side is doubled
        assert mean_abs_error(images[1].tobytes(), frame.rgb * 4) < 2.0


def test_mp4_is_deterministic_and_streams_the_same_bytes(tmp_path: Path) -> None:
    clip = frames_for(48, 32, 4, seed=3)
    data = h264_mp4(clip, 24.0)
    assert h264_mp4(clip, 24.0) == data
    assert h264_mp4(frames_for(48, 32, 4, seed=4), 24.0) != data
    path = tmp_path / "clip.mp4"
    assert write_h264_mp4(path, iter(clip), 24.0) == len(data)
    assert path.read_bytes() == data


def test_mp4_structure() -> None:
    data = h264_mp4(frames_for(40, 24, 3, seed=6), 25.0)
    assert [kind for kind, _, _ in boxes(data)] == [b"ftyp", b"mdat", b"moov"]
    assert find_box(data, [b"ftyp"])[:4] == b"isom"
    stbl = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]
    stts = find_box(data, [*stbl, b"stts"])
    assert struct.unpack(">4xIII", stts) == (1, 3, 1)  # timescale 25: one tick a frame
    mdhd = find_box(data, [b"moov", b"trak", b"mdia", b"mdhd"])
    assert struct.unpack_from(">4x8xII", mdhd) == (25, 3)
    assert struct.unpack(">4xIIII", find_box(data, [*stbl, b"stss"])) == (3, 1, 2, 3)
    avcc = find_box(data, [*stbl, b"stsd"])
    assert b"avc1" in avcc
    assert b"avcC" in avcc
    # The sample table points at length-prefixed IDR NAL units inside mdat.
    stco = find_box(data, [*stbl, b"stco"])
    assert struct.unpack_from(">4xI", stco) == (3,)
    (offset,) = struct.unpack_from(">I", stco, 8)
    stsz = find_box(data, [*stbl, b"stsz"])
    sample_size, count = struct.unpack_from(">4xII", stsz)
    sizes = (
        [sample_size] * count if sample_size else list(struct.unpack_from(f">{count}I", stsz, 12))
    )
    (length,) = struct.unpack_from(">I", data, offset)
    assert length + 4 == sizes[0]
    assert data[offset + 4] & 0x1F == 5  # IDR slice


def test_large_files_switch_to_64_bit_chunk_offsets() -> None:
    encoder = H264Encoder(16, 16, 24.0)
    big = array("I", [2**31, 2**31, 2**31])
    moov = _moov(encoder, big, 48, 24.0)
    stbl = find_box(moov, [b"moov", b"trak", b"mdia", b"minf", b"stbl"])
    kinds = [kind for kind, _, _ in boxes(stbl)]
    assert b"co64" in kinds
    assert b"stco" not in kinds
    co64 = find_box(stbl, [b"co64"])
    assert struct.unpack(">4xIQQQ", co64) == (3, 48, 48 + 2**31, 48 + 2**32)
    small = _moov(encoder, array("I", [1000, 1000]), 48, 24.0)
    assert b"stco" in small
    assert b"co64" not in small


def test_write_h264_mp4_keeps_memory_flat(tmp_path: Path) -> None:
    width = height = 256
    count = 48  # ~19 MB of video
    frame_bytes = width * height * 3
    tracemalloc.start()
    try:
        size = write_h264_mp4(tmp_path / "long.mp4", iter_frames(width, height, count, 8), 24.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > count * width * height * 3 // 2
    assert peak < 16 * frame_bytes, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    with av.open(str(tmp_path / "long.mp4")) as container:
        assert container.streams.video[0].frames == count


def test_mp4_16_frames_of_512_is_fast() -> None:
    clip = frames_for(512, 512, 16, seed=1)
    start = time.perf_counter()
    data = h264_mp4(clip, 16.0)
    elapsed = time.perf_counter() - start
    assert len(data) > 16 * 512 * 512 * 3 // 2
    assert elapsed < 2.0, f"16 frames of 512x512 took {elapsed:.3f}s"  # ~0.15 s measured


@pytest.mark.parametrize("fps", [0.0, -1.0, float("nan"), float("inf"), 1e6])
def test_mp4_rejects_bad_fps(fps: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fps"):
        h264_mp4(frames_for(16, 16, 1, seed=0), fps)
    with pytest.raises(ValueError, match="fps"):
        write_h264_mp4(tmp_path / "x.mp4", frames_for(16, 16, 1, seed=0), fps)
    assert not (tmp_path / "x.mp4").exists()


def test_failed_writes_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="at least one frame"):
        write_h264_mp4(path, [], 24.0)
    assert not path.exists()
    with pytest.raises(ValueError, match="all frames must be 16x16"):
        write_h264_mp4(path, [solid(16, 16, (1, 2, 3)), solid(32, 16, (1, 2, 3))], 24.0)
    assert not path.exists()


# -- animations ----------------------------------------------------------------------------


def frame_count(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1))


def webp_frame_stills(data: bytes) -> list[bytes]:
    """Each ANMF frame's image chunks re-wrapped as a still WebP file."""
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WEBP"
    stills = []
    at = 12
    while at < len(data):
        kind, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        body = data[at + 8 : at + 8 + size]
        if kind == b"ANMF":
            image = body[16:]  # frame rectangle, duration and flags come first
            stills.append(b"RIFF" + struct.pack("<I", 4 + len(image)) + b"WEBP" + image)
        at += 8 + size + size % 2
    return stills


def test_animated_webp(tmp_path: Path) -> None:
    clip = frames_for(64, 48, 6, seed=2)
    data = animated_webp(clip, 8.0, lossless=True)
    assert animated_webp(clip, 8.0, lossless=True) == data
    image = Image.open(io.BytesIO(data))
    assert (image.format, frame_count(image), image.size) == ("WEBP", 6, (64, 48))
    for index, frame in enumerate(clip):
        image.seek(index)
        assert image.convert("RGB").tobytes() == frame.rgb  # lossless: exact
        assert image.info["duration"] == 125
    stills = webp_frame_stills(data)
    assert len(stills) == 6
    for still in stills:
        _, decoded = decode_video(still)
        assert len(decoded) == 1


def test_lossy_webp_is_close() -> None:
    clip = frames_for(64, 48, 3, seed=2)
    image = Image.open(io.BytesIO(animated_webp(clip, 12.0)))
    assert frame_count(image) == 3
    image.seek(2)
    assert mean_abs_error(image.convert("RGB").tobytes(), clip[2].rgb) < 12.0


def test_animated_png() -> None:
    clip = frames_for(50, 30, 5, seed=4)
    data = animated_png(clip, 10.0)
    assert animated_png(clip, 10.0) == data
    stream, images = decode_video(data)
    assert (stream.codec_context.name, len(images)) == ("apng", 5)
    assert stream.average_rate == 10
    for frame, image in zip(clip, images, strict=True):
        assert image.convert("RGB").tobytes() == frame.rgb  # lossless: exact


def test_gif() -> None:
    clip = frames_for(50, 30, 5, seed=4)
    data = gif(clip, 10.0)
    assert gif(clip, 10.0) == data
    assert data[:6] == b"GIF89a"
    stream, images = decode_video(data)
    assert (stream.codec_context.name, len(images), images[0].size) == ("gif", 5, (50, 30))
    for frame, image in zip(clip, images, strict=True):
        assert mean_abs_error(image.convert("RGB").tobytes(), frame.rgb) < 8.0  # 256 colours
    assert Image.open(io.BytesIO(data)).info["duration"] == 100


@pytest.mark.parametrize("writer", [animated_webp, animated_png, gif, h264_mp4])
def test_writers_reject_bad_clips(writer: object) -> None:
    assert callable(writer)
    with pytest.raises(ValueError, match="at least one frame"):
        writer([], 8.0)
    with pytest.raises(ValueError, match="all frames must be 8x8"):
        writer([solid(8, 8, (0, 0, 0)), solid(8, 6, (0, 0, 0))], 8.0)
    with pytest.raises(ValueError, match="fps"):
        writer([solid(8, 8, (0, 0, 0))], 0.0)

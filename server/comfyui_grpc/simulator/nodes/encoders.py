"""Encoders the shared media package does not cover: WebM and JPEG previews."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from fractions import Fraction

from PIL import Image

from ..media import Frame


def jpeg_preview(red: int, green: int, blue: int, width: int = 64, height: int = 0) -> bytes:
    """A small solid JPEG, like the previews TestSlowProgress sends (square unless ``height``)."""
    out = io.BytesIO()
    image = Image.new("RGB", (width, height or width), (red, green, blue))
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def webm(frames: Sequence[Frame], fps: float, codec: str = "vp9") -> bytes:
    """A WebM clip (VP9, or AV1 when asked and available) through PyAV.

    PyAV is an optional dependency (the ``dev`` extra); without it SaveWEBM and
    VHS webm formats fail at run time with a clear execution_error.
    """
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the simulator needs PyAV (pip install av) to write WebM") from exc
    if not frames:
        raise ValueError("a video needs at least one frame")
    codec_name = "libaom-av1" if codec == "av1" else "libvpx-vp9"
    out = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(out, mode="w", format="webm") as container:
        stream = container.add_stream(codec_name, rate=rate)
        assert isinstance(stream, av.VideoStream)
        from_image: Callable[[Image.Image], av.VideoFrame] = av.VideoFrame.from_image
        stream.width = frames[0].width - frames[0].width % 2
        stream.height = frames[0].height - frames[0].height % 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = Image.frombytes("RGB", (frame.width, frame.height), frame.rgb)
            picture = from_image(image)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()

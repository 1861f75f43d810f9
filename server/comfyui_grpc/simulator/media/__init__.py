"""Real, valid media files for the ComfyUI simulator, deterministic for a seed.

Stills are PNG (zlib only), animations go through Pillow, and video is a pure
Python H.264 (I_PCM) bitstream in an MP4 container, so no GPU, model weights
or ffmpeg are needed. Same inputs always give the same bytes.
"""

from .animated import animated_png, animated_webp, gif
from .frames import Frame, frames_for, iter_frames, render_frame
from .h264 import H264Encoder
from .mp4 import h264_mp4, write_h264_mp4
from .png import encode_png, png_image

__all__ = [
    "Frame",
    "H264Encoder",
    "animated_png",
    "animated_webp",
    "encode_png",
    "frames_for",
    "gif",
    "h264_mp4",
    "iter_frames",
    "png_image",
    "render_frame",
    "write_h264_mp4",
]

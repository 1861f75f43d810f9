"""Content types for ComfyUI outputs.

The platform ``mimetypes`` table differs between hosts (webp, mkv and glb are
missing on some), so the types that matter here are fixed; the first bytes of
the file decide when the name says nothing useful.
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_BY_SUFFIX = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".avif": "image/avif",
    ".exr": "image/x-exr",
    ".svg": "image/svg+xml",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".m4a": "audio/mp4",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".safetensors": DEFAULT_CONTENT_TYPE,
}


def sniff_content_type(head: bytes) -> str | None:
    """Recognises the common output formats from their first bytes."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"qt  ",):
            return "video/quicktime"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    return None


def guess_content_type(filename: str, head: bytes = b"") -> str:
    """The MIME type for an output, from its name, else its first bytes."""
    suffix = PurePosixPath(filename).suffix.lower()
    known = _BY_SUFFIX.get(suffix)
    if known is not None:
        return known
    sniffed = sniff_content_type(head)
    if sniffed is not None:
        return sniffed
    guessed, _ = mimetypes.guess_type(f"x{suffix}", strict=False) if suffix else (None, None)
    return guessed or DEFAULT_CONTENT_TYPE

"""Object keys: building them from untrusted names, and checking keys handed back.

Job ids, node ids and file names come from callers and from ComfyUI, so each
is reduced to a safe path segment: no separators, no ``.``/``..``, no control
or shell-hostile characters, bounded length. A key is accepted by a store only
if it is exactly what these rules produce under the store's prefix, so nothing
can reach outside the prefix (or outside a local store's directory).
"""

from __future__ import annotations

import unicodedata

from .errors import InvalidKey

MANIFEST_NAME = "manifest.json"
MAX_SEGMENT_BYTES = 160
"""Keeps ``segment + ".json"`` under the 255-byte file name limit of local disks."""
MAX_PREFIX_BYTES = 256
MAX_KEY_BYTES = 1024
"""The S3 limit on key length."""
_MAX_SUFFIX_CHARS = 16
_ALLOWED_PUNCTUATION = frozenset("-_.+=@,()")


def _allowed(char: str) -> bool:
    if char in _ALLOWED_PUNCTUATION:
        return True
    return char.isalnum() and unicodedata.category(char)[0] in "LN"


def _truncate(segment: str) -> str:
    """Shortens to MAX_SEGMENT_BYTES of UTF-8, keeping a short extension."""
    if len(segment.encode()) <= MAX_SEGMENT_BYTES:
        return segment
    stem, dot, suffix = segment.rpartition(".")
    if not dot or not stem or len(suffix) > _MAX_SUFFIX_CHARS:
        stem, suffix = segment, ""
    tail = f".{suffix}" if suffix else ""
    budget = MAX_SEGMENT_BYTES - len(tail.encode())
    stem = stem.encode()[:budget].decode(errors="ignore")
    return stem + tail


def sanitize_segment(value: str) -> str:
    """Turns any text into one safe, non-empty key segment.

    Letters and digits of any script survive, as do ``-_.+=@,()``; everything
    else (separators, spaces, control characters, ...) becomes ``_``. Leading
    dots are dropped so a segment is never ``.``, ``..`` or hidden.
    """
    normalized = unicodedata.normalize("NFC", value)
    cleaned = "".join(c if _allowed(c) else "_" for c in normalized).lstrip(".")
    return _truncate(cleaned) or "_"


def normalize_prefix(prefix: str) -> str:
    """Sanitises each ``/``-separated part of a prefix; empty parts vanish."""
    parts = [p for p in prefix.replace("\\", "/").split("/") if p]
    result = "/".join(sanitize_segment(p) for p in parts)
    if len(result.encode()) > MAX_PREFIX_BYTES:
        raise ValueError(f"key prefix is longer than {MAX_PREFIX_BYTES} bytes")
    return result


def join_key(prefix: str, *segments: str) -> str:
    """Joins an already normalised prefix and sanitised segments."""
    return "/".join([prefix, *segments] if prefix else segments)


def artifact_key(prefix: str, job_id: str, node_id: str, filename: str) -> str:
    """``{prefix}/{job_id}/{node_id}/{filename}`` with every part sanitised."""
    node = sanitize_segment(node_id)
    if node == MANIFEST_NAME:
        # A node directory must never clash with the job's manifest object.
        node += "_"
    return join_key(prefix, sanitize_segment(job_id), node, sanitize_segment(filename))


def manifest_key(prefix: str, job_id: str) -> str:
    """``{prefix}/{job_id}/manifest.json``."""
    return join_key(prefix, sanitize_segment(job_id), MANIFEST_NAME)


def validate_key(prefix: str, key: str) -> list[str]:
    """Checks that ``key`` lies under ``prefix`` and is built of sanitised segments.

    Returns the segments below the prefix; raises :class:`InvalidKey` otherwise.
    """
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid object key (empty or over {MAX_KEY_BYTES} bytes)")
    head = f"{prefix}/" if prefix else ""
    if not key.startswith(head):
        raise InvalidKey(f"object key {key!r} is outside the store's prefix {prefix!r}")
    segments = key[len(head) :].split("/")
    for segment in segments:
        if not segment or sanitize_segment(segment) != segment:
            raise InvalidKey(f"invalid object key {key!r}")
    return segments

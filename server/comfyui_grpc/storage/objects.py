"""The description of a stored object that every store returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class StoredObject:
    """An object as stored: where it is, and what was verified about its bytes."""

    key: str
    """Object key within the store, ``{prefix}/{job_id}/{node_id}/{filename}``."""
    uri: str
    """``s3://bucket/key`` or ``file:///...``."""
    size_bytes: int
    sha256: str
    """Lower-case hex SHA-256 of the bytes; empty if the object carries none."""
    content_type: str

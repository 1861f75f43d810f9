"""Choosing the store: S3 when a bucket is configured, else the local directory."""

from __future__ import annotations

from .base import ArtifactStore
from .local_store import LocalArtifactStore
from .s3_store import S3ArtifactStore
from .settings import S3Settings, StorageSettings


def make_store(settings: StorageSettings | S3Settings) -> ArtifactStore:
    """Builds (but does not start) the configured store."""
    if isinstance(settings, S3Settings):
        return S3ArtifactStore(settings)
    if settings.s3 is not None:
        return S3ArtifactStore(settings.s3)
    return LocalArtifactStore(settings.local_dir)

"""Artifact storage: where every generated output and job manifest is kept.

Two stores share one interface, :class:`ArtifactStore`: S3 (AWS, RustFS,
MinIO) through aioboto3, and a local directory for ``dev`` and hosts without
S3. Nothing here knows about gRPC.
"""

from .base import ArtifactStore
from .content_types import guess_content_type
from .errors import InvalidKey, ObjectNotFound, StorageError, StorageRejected, StorageUnavailable
from .factory import make_store
from .local_store import LocalArtifactStore
from .manifest import (
    InvalidManifest,
    Manifest,
    ManifestArtifact,
    build_manifest,
    parse_manifest,
    workflow_sha256,
)
from .objects import StoredObject
from .options import add_storage_arguments, storage_settings_from_args
from .s3_store import S3ArtifactStore
from .settings import S3Settings, StorageSettings

__all__ = [
    "ArtifactStore",
    "InvalidKey",
    "InvalidManifest",
    "LocalArtifactStore",
    "Manifest",
    "ManifestArtifact",
    "ObjectNotFound",
    "S3ArtifactStore",
    "S3Settings",
    "StorageError",
    "StorageRejected",
    "StorageSettings",
    "StorageUnavailable",
    "StoredObject",
    "add_storage_arguments",
    "build_manifest",
    "guess_content_type",
    "make_store",
    "parse_manifest",
    "storage_settings_from_args",
    "workflow_sha256",
]

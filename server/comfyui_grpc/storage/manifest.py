"""The per-job ``manifest.json``: what a job produced, readable without the gateway.

It lets the gateway answer GetResult for jobs it no longer holds in memory,
and lets anyone browsing the bucket see what each object is. Pure functions,
no I/O: the job pipeline writes the bytes with ``ArtifactStore.put_bytes``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import StorageError
from .objects import StoredObject

MANIFEST_VERSION = 1
MANIFEST_CONTENT_TYPE = "application/json"


class InvalidManifest(StorageError):
    """The stored manifest is not one this gateway can read."""


@dataclass(frozen=True, kw_only=True)
class ManifestArtifact:
    """One stored output of a job."""

    node_id: str
    filename: str
    """The name ComfyUI gave the output (before sanitising)."""
    key: str
    uri: str
    size_bytes: int
    sha256: str
    content_type: str
    animated: bool = False

    @classmethod
    def from_stored(
        cls, stored: StoredObject, *, node_id: str, filename: str, animated: bool = False
    ) -> ManifestArtifact:
        return cls(
            node_id=node_id,
            filename=filename,
            key=stored.key,
            uri=stored.uri,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            content_type=stored.content_type,
            animated=animated,
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A parsed manifest."""

    job_id: str
    state: str
    """The job's final state, e.g. ``SUCCEEDED``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    workflow_sha256: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    error: Mapping[str, str] | None = None
    """``JobError`` fields (reason, message, node_id, ...) for a failed job."""
    artifacts: tuple[ManifestArtifact, ...] = ()
    request_id: str = ""
    kind: str = ""
    backend: str = ""
    template: Mapping[str, Any] | None = None
    """``{"name", "version", "params"}`` for a job made from a template."""
    version: int = MANIFEST_VERSION


def workflow_sha256(workflow: Mapping[str, Any]) -> str:
    """A stable hash of an API-format workflow (key order and spacing do not matter)."""
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("manifest timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_manifest(
    *,
    job_id: str,
    state: str,
    labels: Mapping[str, str],
    workflow_sha256: str,
    create_time: datetime | None,
    start_time: datetime | None,
    end_time: datetime | None,
    error: Mapping[str, str] | None,
    artifacts: Sequence[ManifestArtifact],
    request_id: str = "",
    kind: str = "",
    backend: str = "",
    template: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialises a manifest as indented UTF-8 JSON."""
    document = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job_id,
        "request_id": request_id,
        "kind": kind,
        "state": state,
        "labels": dict(sorted(labels.items())),
        "workflow_sha256": workflow_sha256,
        "backend": backend,
        "template": dict(template) if template else None,
        "create_time": _timestamp(create_time),
        "start_time": _timestamp(start_time),
        "end_time": _timestamp(end_time),
        "error": dict(error) if error is not None else None,
        "artifacts": [
            {
                "node_id": a.node_id,
                "filename": a.filename,
                "key": a.key,
                "uri": a.uri,
                "size_bytes": a.size_bytes,
                "sha256": a.sha256,
                "content_type": a.content_type,
                "animated": a.animated,
            }
            for a in artifacts
        ],
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def _get(doc: Mapping[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = doc.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidManifest(f"manifest field {name!r} is not a {kind.__name__}")
    return value


def _parse_time(doc: Mapping[str, Any], name: str) -> datetime | None:
    raw = _get(doc, name, str)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidManifest(f"manifest field {name!r} is not a timestamp") from exc
    if value.tzinfo is None:
        raise InvalidManifest(f"manifest field {name!r} has no time zone")
    return value


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidManifest(f"manifest field {name!r} is not a map of strings")
    return value


def _parse_artifact(item: Any) -> ManifestArtifact:
    if not isinstance(item, dict):
        raise InvalidManifest("a manifest artifact is not an object")
    return ManifestArtifact(
        node_id=_get(item, "node_id", str, ""),
        filename=_get(item, "filename", str, ""),
        key=_get(item, "key", str, ""),
        uri=_get(item, "uri", str, ""),
        size_bytes=_get(item, "size_bytes", int, 0),
        sha256=_get(item, "sha256", str, ""),
        content_type=_get(item, "content_type", str, ""),
        animated=_get(item, "animated", bool, False),
    )


def _template(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not isinstance(value.get("version"), int)
        or not isinstance(value.get("params", {}), dict)
    ):
        raise InvalidManifest("template must be an object with name, version and params")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Reads a manifest written by :func:`build_manifest`; raises ``InvalidManifest``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidManifest(f"manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest is not a JSON object")
    version = _get(doc, "manifest_version", int, 0)
    if version != MANIFEST_VERSION:
        raise InvalidManifest(f"unsupported manifest version {version}")
    job_id = _get(doc, "job_id", str, "")
    state = _get(doc, "state", str, "")
    if not job_id or not state:
        raise InvalidManifest("manifest lacks a job id or state")
    error = doc.get("error")
    artifacts = _get(doc, "artifacts", list, [])
    return Manifest(
        job_id=job_id,
        state=state,
        labels=_str_map(doc.get("labels", {}), "labels"),
        workflow_sha256=_get(doc, "workflow_sha256", str, ""),
        create_time=_parse_time(doc, "create_time"),
        start_time=_parse_time(doc, "start_time"),
        end_time=_parse_time(doc, "end_time"),
        error=_str_map(error, "error") if error is not None else None,
        artifacts=tuple(_parse_artifact(item) for item in artifacts),
        request_id=_get(doc, "request_id", str, ""),
        kind=_get(doc, "kind", str, ""),
        backend=_get(doc, "backend", str, ""),
        template=_template(doc.get("template")),
        version=version,
    )

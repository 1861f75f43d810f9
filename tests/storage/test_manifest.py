"""The per-job manifest: what GetResult falls back on once a job has left memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from comfyui_grpc.storage import (
    InvalidManifest,
    ManifestArtifact,
    StoredObject,
    build_manifest,
    parse_manifest,
    workflow_sha256,
)

CREATED = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IMAGE = StoredObject(
    key="outputs/job-1/9/ComfyUI_00001_.png",
    uri="s3://bucket/outputs/job-1/9/ComfyUI_00001_.png",
    size_bytes=1234,
    sha256="ab" * 32,
    content_type="image/png",
)


def manifest_bytes(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "job_id": "job-1",
        "state": "SUCCEEDED",
        "labels": {"team": "art", "run": "7"},
        "workflow_sha256": "cd" * 32,
        "create_time": CREATED,
        "start_time": CREATED + timedelta(seconds=1),
        "end_time": CREATED + timedelta(seconds=9),
        "error": None,
        "artifacts": [
            ManifestArtifact.from_stored(IMAGE, node_id="9", filename="ComfyUI_00001_.png")
        ],
        "request_id": "req-1",
        "kind": "TEXT_TO_IMAGE",
        "backend": "http://comfy:8188",
    }
    fields.update(overrides)
    return build_manifest(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    manifest = parse_manifest(manifest_bytes())
    assert manifest.job_id == "job-1"
    assert manifest.state == "SUCCEEDED"
    assert manifest.labels == {"team": "art", "run": "7"}
    assert manifest.workflow_sha256 == "cd" * 32
    assert manifest.create_time == CREATED
    assert manifest.end_time == CREATED + timedelta(seconds=9)
    assert manifest.error is None
    assert (manifest.request_id, manifest.kind, manifest.backend) == (
        "req-1",
        "TEXT_TO_IMAGE",
        "http://comfy:8188",
    )
    (artifact,) = manifest.artifacts
    assert artifact == ManifestArtifact(
        node_id="9",
        filename="ComfyUI_00001_.png",
        key=IMAGE.key,
        uri=IMAGE.uri,
        size_bytes=1234,
        sha256="ab" * 32,
        content_type="image/png",
        animated=False,
    )


def test_document_is_plain_readable_json() -> None:
    doc = json.loads(manifest_bytes())
    assert doc["manifest_version"] == 1
    assert doc["create_time"] == "2025-05-01T12:00:00.123456Z"
    assert doc["artifacts"][0]["key"] == IMAGE.key


def test_failed_job_keeps_its_error_and_times_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    manifest = parse_manifest(
        manifest_bytes(
            state="FAILED",
            error={"reason": "STORAGE_FAILED", "message": "S3 unreachable"},
            artifacts=[],
            start_time=None,
            end_time=datetime(2025, 5, 1, 14, 0, tzinfo=paris),
        )
    )
    assert manifest.error == {"reason": "STORAGE_FAILED", "message": "S3 unreachable"}
    assert manifest.start_time is None
    assert manifest.end_time == datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert manifest.artifacts == ()


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        manifest_bytes(create_time=datetime(2025, 5, 1))


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"manifest_version": 2, "job_id": "j", "state": "SUCCEEDED"}',
        b'{"manifest_version": 1, "job_id": "", "state": "SUCCEEDED"}',
        b'{"manifest_version": 1, "job_id": "j", "state": "S", "labels": {"a": 1}}',
        b'{"manifest_version": 1, "job_id": "j", "state": "S", "artifacts": [{"size_bytes": "1"}]}',
        b'{"manifest_version": 1, "job_id": "j", "state": "S", "create_time": "yesterday"}',
        b"\xff\xfe",
    ],
)
def test_broken_manifests_raise_invalid_manifest(data: bytes) -> None:
    with pytest.raises(InvalidManifest):
        parse_manifest(data)


def test_workflow_hash_ignores_key_order_and_spacing() -> None:
    first = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}}
    second = json.loads('{"3":{"inputs":{"steps":20,"seed":5},"class_type":"KSampler"}}')
    assert workflow_sha256(first) == workflow_sha256(second)
    assert workflow_sha256(first) != workflow_sha256({"3": {"inputs": {"seed": 6}}})

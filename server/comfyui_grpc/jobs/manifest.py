"""A job's ``manifest.json``, stored next to its artifacts.

It records what was asked (labels, workflow hash), what happened (times,
final state, error) and what was stored (key, size, content type, sha256),
so GetResult can answer for a job the gateway no longer holds in memory.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from ..storage import (
    ArtifactStore,
    Manifest,
    ManifestArtifact,
    ObjectNotFound,
    StorageError,
    build_manifest,
    parse_manifest,
)
from .job import Job, JobSpec
from .model import Artifact, JobFailure, JobKind, JobState

log = logging.getLogger(__name__)


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def manifest_of(job: Job, final_state: str | None = None, end_time: float | None = None) -> bytes:
    failure = job.failure
    return build_manifest(
        job_id=job.job_id,
        state=final_state or job.state.value,
        labels=job.spec.labels,
        workflow_sha256=job.spec.workflow_sha256,
        create_time=_utc(job.create_time),
        start_time=_utc(job.start_time),
        end_time=_utc(end_time if end_time is not None else job.end_time),
        error=None
        if failure is None
        else {
            "reason": failure.reason,
            "message": failure.message,
            "node_id": failure.node_id,
            "class_type": failure.class_type,
            "exception_type": failure.exception_type,
        },
        artifacts=[
            ManifestArtifact(
                node_id=a.node_id,
                filename=a.filename,
                key=a.key,
                uri=a.uri,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                content_type=a.content_type,
                animated=a.animated,
            )
            for a in job.artifacts
        ],
        request_id=job.spec.request_id,
        kind=job.spec.kind.value,
        backend=job.backend,
        template={
            "name": job.spec.template,
            "version": job.spec.template_version,
            "params": dict(job.spec.template_params),
        }
        if job.spec.template
        else None,
    )


async def write_manifest(store: ArtifactStore, job: Job, final_state: str | None = None) -> None:
    end = time.time() if final_state else None
    await store.put_bytes(
        store.manifest_key(job.job_id),
        manifest_of(job, final_state, end),
        content_type="application/json",
    )


async def write_manifest_quietly(store: ArtifactStore, job: Job) -> None:
    """For failed and cancelled jobs: a record is useful, but not worth failing over."""
    try:
        await write_manifest(store, job)
    except StorageError as exc:
        log.warning("could not store the manifest: %s", exc, extra=job.log_context)


def job_from_manifest(manifest: Manifest) -> Job:
    """Rebuild a finished job's view from its manifest."""
    template = manifest.template
    spec = JobSpec(
        kind=JobKind(manifest.kind or JobKind.WORKFLOW.value),
        workflow={},
        workflow_sha256=manifest.workflow_sha256,
        request_id=manifest.request_id,
        labels=dict(manifest.labels),
        template=str(template.get("name", "")) if template else "",
        template_version=int(template.get("version", 0)) if template else 0,
        template_params=dict(template.get("params", {})) if template else {},
    )
    error = manifest.error
    job = Job(manifest.job_id, spec)
    job.restore(
        state=JobState(manifest.state),
        backend=manifest.backend,
        create_time=_epoch(manifest.create_time) or 0.0,
        start_time=_epoch(manifest.start_time),
        end_time=_epoch(manifest.end_time),
        queue_number=0.0,
        cancel_requested=False,
        attempts=0,
        failure=None
        if error is None
        else JobFailure(
            reason=error.get("reason", ""),
            message=error.get("message", ""),
            node_id=error.get("node_id", ""),
            class_type=error.get("class_type", ""),
            exception_type=error.get("exception_type", ""),
        ),
        artifacts=[
            Artifact(
                node_id=a.node_id,
                filename=a.filename,
                key=a.key,
                uri=a.uri,
                content_type=a.content_type,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                animated=a.animated,
            )
            for a in manifest.artifacts
        ],
        outputs={},
        events=[],
    )
    return job


async def load_job(store: ArtifactStore, job_id: str) -> Job | None:
    try:
        raw = await store.get_bytes(store.manifest_key(job_id))
    except ObjectNotFound:
        return None
    try:
        return job_from_manifest(parse_manifest(raw))
    except ValueError as exc:
        raise StorageError(f"the manifest of job {job_id} is unreadable: {exc}") from exc

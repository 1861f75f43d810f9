"""Domain objects -> protobuf messages.

An event is converted once and the message cached on it, however many
streams send it.
"""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2

from ..jobs import events as ev
from ..jobs.job import Job
from ..jobs.model import Artifact, JobFailure, JobKind, JobState
from ..jobs.previews import NodePreview
from ..v1 import generation_service_pb2 as pb
from ..v1 import job_pb2

STATES = {
    JobState.QUEUED: job_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
    JobState.UPLOADING: job_pb2.JOB_STATE_UPLOADING,
    JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: job_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}
STATES_BACK = {value: key for key, value in STATES.items()}

CALLBACK_STATES = {
    "": job_pb2.CALLBACK_STATE_UNSPECIFIED,
    "waiting": job_pb2.CALLBACK_STATE_PENDING,
    "pending": job_pb2.CALLBACK_STATE_PENDING,
    "delivered": job_pb2.CALLBACK_STATE_DELIVERED,
    "failed": job_pb2.CALLBACK_STATE_FAILED,
}

KINDS = {
    JobKind.TEXT_TO_IMAGE: job_pb2.JOB_KIND_TEXT_TO_IMAGE,
    JobKind.VIDEO: job_pb2.JOB_KIND_VIDEO,
    JobKind.WORKFLOW: job_pb2.JOB_KIND_WORKFLOW,
}


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def artifact(a: Artifact) -> job_pb2.Artifact:
    return job_pb2.Artifact(
        node_id=a.node_id,
        filename=a.filename,
        key=a.key,
        uri=a.uri,
        content_type=a.content_type,
        size_bytes=a.size_bytes,
        sha256=a.sha256,
        animated=a.animated,
    )


def failure(f: JobFailure) -> job_pb2.JobError:
    return job_pb2.JobError(
        reason=f.reason,
        message=f.message,
        node_id=f.node_id,
        class_type=f.class_type,
        exception_type=f.exception_type,
    )


def job(j: Job) -> job_pb2.Job:
    p = j.progress
    message = job_pb2.Job(
        job_id=j.job_id,
        request_id=j.spec.request_id,
        state=STATES[j.state],
        kind=KINDS[j.spec.kind],
        labels=dict(j.spec.labels),
        queue_position=j.queue_position if j.state is JobState.QUEUED else 0,
        progress=job_pb2.JobProgress(
            fraction=p.fraction,
            node_id=p.node_id,
            class_type=p.class_type,
            value=p.value,
            max=p.max,
            nodes_completed=p.nodes_completed,
            nodes_total=p.nodes_total,
        ),
        artifacts=[artifact(a) for a in j.artifacts],
        create_time=timestamp(j.create_time),
        start_time=timestamp(j.start_time),
        end_time=timestamp(j.end_time),
        backend=j.backend,
        sequence=j.log.last_sequence,
        cancel_requested=j.cancel_requested,
        callback_state=CALLBACK_STATES.get(j.callback_state, job_pb2.CALLBACK_STATE_UNSPECIFIED),
        callback_attempts=j.callback_attempts,
        callback_last_error=j.callback_last_error,
    )
    if j.failure is not None:
        message.error.CopyFrom(failure(j.failure))
    if j.spec.template:
        message.template = j.spec.template
        message.template_version = j.spec.template_version
        message.template_params.update(dict(j.spec.template_params))
    return message


def snapshot(j: Job) -> pb.ProgressEvent:
    view = job(j)
    return pb.ProgressEvent(
        job_id=j.job_id,
        sequence=view.sequence,
        state=view.state,
        event_time=timestamp(time.time()),
        snapshot=pb.JobSnapshot(job=view),
    )


def _uint32(value: int) -> int:
    return min(max(0, value), 0xFFFFFFFF)


def preview(j: Job, p: NodePreview) -> pb.ProgressEvent:
    """A preview, stamped with the job's last sequence (it consumes none)."""
    return pb.ProgressEvent(
        job_id=j.job_id,
        sequence=j.log.last_sequence,
        state=STATES[j.state],
        event_time=timestamp(time.time()),
        preview=pb.NodePreview(
            node_id=p.node_id,
            class_type=p.class_type,
            content_type=p.content_type,
            image=p.image,
            value=_uint32(p.value),
            max=_uint32(p.max),
        ),
    )


def event(e: ev.Event) -> pb.ProgressEvent:
    cached = e.wire
    if isinstance(cached, pb.ProgressEvent):
        return cached
    message = pb.ProgressEvent(
        job_id=e.job_id, sequence=e.sequence, state=STATES[e.state], event_time=timestamp(e.time)
    )
    match e.payload:
        case ev.Queued(position=position, backend=backend):
            message.queued.CopyFrom(pb.JobQueued(queue_position=position, backend=backend))
        case ev.Started():
            message.started.SetInParent()
        case ev.NodeStarted(node_id=node_id, class_type=class_type):
            message.node_started.CopyFrom(pb.NodeStarted(node_id=node_id, class_type=class_type))
        case ev.NodeProgressed() as p:
            message.node_progress.CopyFrom(
                pb.NodeProgress(
                    node_id=p.node_id,
                    class_type=p.class_type,
                    value=max(0, p.value),
                    max=max(0, p.max),
                    node_fraction=p.node_fraction,
                    job_fraction=p.job_fraction,
                )
            )
        case ev.NodesCached(node_ids=node_ids):
            message.nodes_cached.CopyFrom(pb.NodesCached(node_ids=list(node_ids)))
        case ev.NodeFinished(node_id=node_id, class_type=class_type):
            message.node_finished.CopyFrom(pb.NodeFinished(node_id=node_id, class_type=class_type))
        case ev.Uploading(artifact_count=count):
            message.uploading.CopyFrom(pb.JobUploading(artifact_count=count))
        case ev.ArtifactStored(artifact=a):
            message.artifact_stored.CopyFrom(pb.ArtifactStored(artifact=artifact(a)))
        case ev.Succeeded(artifacts=artifacts):
            message.succeeded.CopyFrom(pb.JobSucceeded(artifacts=[artifact(a) for a in artifacts]))
        case ev.Failed(failure=f):
            message.failed.CopyFrom(pb.JobFailed(error=failure(f)))
        case ev.Cancelled(was_running=was_running):
            message.cancelled.CopyFrom(pb.JobCancelled(was_running=was_running))
    e.wire = message
    return message

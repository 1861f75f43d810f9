"""Typed progress updates built from the raw ``ProgressEvent`` stream.

Raw events only say what changed (a node started, a step ticked); a progress
bar wants the whole picture on every update. :class:`ProgressFollower` folds
the events into :class:`ProgressUpdate` values that always carry the overall
fraction and the current node, and it drops the duplicates a resumed stream
may replay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from comfyui_grpc.v1 import generation_service_pb2 as pb

from .models import Artifact, Job, JobError, JobState, timestamp


class EventKind(enum.StrEnum):
    """Which ``ProgressEvent.event`` field was set."""

    SNAPSHOT = "snapshot"
    QUEUED = "queued"
    STARTED = "started"
    NODE_STARTED = "node_started"
    NODE_PROGRESS = "node_progress"
    NODES_CACHED = "nodes_cached"
    NODE_FINISHED = "node_finished"
    UPLOADING = "uploading"
    ARTIFACT_STORED = "artifact_stored"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREVIEW = "preview"
    UNKNOWN = "unknown"


_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


@dataclass(frozen=True, slots=True)
class Preview:
    """A node's newest intermediate image (only on streams that asked for previews).

    ``value``/``max`` are the node's step when the server knew it (else 0/0).
    Previews are not events: they are never replayed and carry the sequence
    of the event before them.
    """

    job_id: str
    node_id: str
    class_type: str
    content_type: str
    image: bytes = field(repr=False)
    value: int = 0
    max: int = 0

    @property
    def extension(self) -> str:
        """``.jpg``, ``.png`` or ``.webp``: a file name suffix for the image."""
        return _EXTENSIONS.get(self.content_type, ".bin")


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One event, with the job's overall progress carried forward.

    ``fraction`` (0..1) and ``node_id``/``class_type`` describe the job after
    this event even when the event itself does not mention them. (A snapshot
    followed by a replay keeps them at the replay's starting point; its
    ``job`` has the current picture.)
    ``resumed`` marks the first update after the SDK re-opened a dropped
    stream.
    """

    job_id: str
    sequence: int
    kind: EventKind
    state: JobState
    fraction: float
    node_id: str = ""
    class_type: str = ""
    value: int = 0
    max: int = 0
    queue_position: int = 0
    event_time: datetime | None = None
    artifact: Artifact | None = None
    artifacts: tuple[Artifact, ...] = ()
    error: JobError | None = None
    cached_node_ids: tuple[str, ...] = ()
    job: Job | None = None
    resumed: bool = False
    preview: Preview | None = None
    """Set on ``PREVIEW`` updates (see :meth:`AsyncClient.watch` ``include_previews``)."""
    raw: pb.ProgressEvent | None = field(default=None, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether this is the job's final event. A stream opened on a job that
        had already finished holds only a snapshot (its ``state`` is terminal)."""
        return self.kind in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED)

    @property
    def percent(self) -> int:
        return round(self.fraction * 100)


class ProgressFollower:
    """Folds raw events into updates and remembers where to resume.

    ``resume_after`` is the value to send as ``after_sequence`` when the
    stream must be re-opened: replayed events up to it are dropped here.
    """

    def __init__(self, job_id: str, after_sequence: int | None = None) -> None:
        self.job_id = job_id
        self.after_sequence = after_sequence
        self.last_sequence: int | None = None
        self.fraction = 0.0
        self.node_id = ""
        self.class_type = ""
        self.value = 0
        self.max = 0
        self.state = JobState.UNSPECIFIED
        self.finished = False
        self._resumed = False

    @property
    def resume_after(self) -> int | None:
        """``after_sequence`` for the next stream: the caller's until an event arrived."""
        return self.after_sequence if self.last_sequence is None else self.last_sequence

    def mark_resumed(self) -> None:
        self._resumed = True

    def accept(self, event: pb.ProgressEvent) -> ProgressUpdate | None:
        """The update for ``event``, or None when it repeats one already seen."""
        kind_name = event.WhichOneof("event") or "unknown"
        try:
            kind = EventKind(kind_name)
        except ValueError:
            kind = EventKind.UNKNOWN
        if kind is EventKind.PREVIEW:
            # Not an event: no sequence of its own, never a repeat, changes nothing.
            return self._preview(event)
        if kind is EventKind.SNAPSHOT:
            if self.last_sequence is not None:
                # A re-opened stream starts with a fresh snapshot; the caller
                # already has the picture, the replay fills the gap.
                return None
        elif self.last_sequence is not None and event.sequence <= self.last_sequence:
            return None
        if kind is EventKind.SNAPSHOT and self.after_sequence is not None:
            # Replay of older events follows; they must not look like repeats.
            self.last_sequence = min(event.sequence, self.after_sequence)
        else:
            self.last_sequence = event.sequence
        self.state = JobState.parse(event.state)
        update = self._fold(kind, event)
        if update.terminal:
            self.finished = True
        self._resumed = False
        return update

    def _preview(self, event: pb.ProgressEvent) -> ProgressUpdate:
        p = event.preview
        return ProgressUpdate(
            job_id=self.job_id,
            sequence=event.sequence,
            kind=EventKind.PREVIEW,
            state=self.state,
            fraction=self.fraction,
            node_id=self.node_id,
            class_type=self.class_type,
            value=self.value,
            max=self.max,
            event_time=timestamp(event.event_time, event.HasField("event_time")),
            preview=Preview(
                self.job_id, p.node_id, p.class_type, p.content_type, p.image, p.value, p.max
            ),
            raw=event,
        )

    def _fold(self, kind: EventKind, event: pb.ProgressEvent) -> ProgressUpdate:
        artifact: Artifact | None = None
        artifacts: tuple[Artifact, ...] = ()
        error: JobError | None = None
        cached: tuple[str, ...] = ()
        job: Job | None = None
        queue_position = 0
        if kind is EventKind.SNAPSHOT:
            job = Job.from_proto(event.snapshot.job)
            replay_follows = (
                self.after_sequence is not None and event.sequence > self.after_sequence
            )
            if not replay_follows:
                # With a replay coming, the carried picture is built from the
                # replayed events instead, so it never runs backwards.
                self.fraction = job.progress.fraction
                self.node_id, self.class_type = job.progress.node_id, job.progress.class_type
                self.value, self.max = job.progress.value, job.progress.max
            queue_position = job.queue_position
            artifacts = job.artifacts
            error = job.error
        elif kind is EventKind.QUEUED:
            queue_position = event.queued.queue_position
        elif kind is EventKind.NODE_STARTED:
            self.node_id = event.node_started.node_id
            self.class_type = event.node_started.class_type
            self.value = self.max = 0
        elif kind is EventKind.NODE_PROGRESS:
            p = event.node_progress
            self.node_id, self.class_type = p.node_id, p.class_type
            self.value, self.max = p.value, p.max
            self.fraction = max(self.fraction, p.job_fraction)
        elif kind is EventKind.NODES_CACHED:
            cached = tuple(event.nodes_cached.node_ids)
        elif kind is EventKind.NODE_FINISHED:
            self.value = self.max
        elif kind is EventKind.UPLOADING:
            self.node_id = self.class_type = ""
            self.value = self.max = 0
        elif kind is EventKind.ARTIFACT_STORED:
            artifact = Artifact.from_proto(event.artifact_stored.artifact, self.job_id)
        elif kind is EventKind.SUCCEEDED:
            self.fraction = 1.0
            self.node_id = self.class_type = ""
            artifacts = tuple(
                Artifact.from_proto(a, self.job_id) for a in event.succeeded.artifacts
            )
        elif kind is EventKind.FAILED:
            error = JobError.from_proto(event.failed.error)
        return ProgressUpdate(
            job_id=self.job_id,
            sequence=event.sequence,
            kind=kind,
            state=self.state,
            fraction=self.fraction,
            node_id=self.node_id,
            class_type=self.class_type,
            value=self.value,
            max=self.max,
            queue_position=queue_position,
            event_time=timestamp(event.event_time, event.HasField("event_time")),
            artifact=artifact,
            artifacts=artifacts,
            error=error,
            cached_node_ids=cached,
            job=job,
            resumed=self._resumed,
            raw=event,
        )

"""Job events: every change of a job is one event with a per-job sequence.

Payloads are small frozen dataclasses; :class:`Event` wraps one with the
sequence, the state after the event and a wall-clock time. ``wire`` lets the
API layer cache its serialised form so an event sent to a thousand
subscribers is converted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Artifact, JobFailure, JobState


@dataclass(frozen=True, slots=True)
class Queued:
    position: int
    backend: str


@dataclass(frozen=True, slots=True)
class Started:
    pass


@dataclass(frozen=True, slots=True)
class NodeStarted:
    node_id: str
    class_type: str


@dataclass(frozen=True, slots=True)
class NodeProgressed:
    node_id: str
    class_type: str
    value: int
    max: int
    node_fraction: float
    job_fraction: float


@dataclass(frozen=True, slots=True)
class NodesCached:
    node_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeFinished:
    node_id: str
    class_type: str


@dataclass(frozen=True, slots=True)
class Uploading:
    artifact_count: int


@dataclass(frozen=True, slots=True)
class ArtifactStored:
    artifact: Artifact


@dataclass(frozen=True, slots=True)
class Succeeded:
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    failure: JobFailure


@dataclass(frozen=True, slots=True)
class Cancelled:
    was_running: bool


Payload = (
    Queued
    | Started
    | NodeStarted
    | NodeProgressed
    | NodesCached
    | NodeFinished
    | Uploading
    | ArtifactStored
    | Succeeded
    | Failed
    | Cancelled
)

TERMINAL_PAYLOADS = (Succeeded, Failed, Cancelled)
NODE_PAYLOADS = (NodeStarted, NodeProgressed, NodesCached, NodeFinished)


@dataclass(slots=True, eq=False)
class Event:
    job_id: str
    sequence: int
    state: JobState
    time: float
    payload: Payload
    wire: object | None = field(default=None, repr=False)

    @property
    def coalescible(self) -> bool:
        """Only step progress may be merged for a slow reader; transitions never."""
        return isinstance(self.payload, NodeProgressed)

    @property
    def node_level(self) -> bool:
        """A node's start, steps, finish or cache hit: the events a long log may drop.

        The job's own view (state, progress, node counts) never depends on
        them being kept; transitions and artifacts are always kept.
        """
        return isinstance(self.payload, NODE_PAYLOADS)

    @property
    def terminal(self) -> bool:
        return isinstance(self.payload, TERMINAL_PAYLOADS)

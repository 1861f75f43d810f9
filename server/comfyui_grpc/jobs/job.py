"""One generation job and its state machine.

The job turns what ComfyUI reports into events on its log and keeps the
derived view (state, progress, outputs, artifacts) that snapshots and results
are built from. It does no I/O: the job service feeds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .log import EventLog
from .model import Artifact, JobFailure, JobKind, JobState, OutputFile, ProgressView
from .previews import PreviewSlot
from .progress import ProgressTracker

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What a caller asked for, fixed at creation."""

    kind: JobKind
    workflow: Mapping[str, Any]
    workflow_sha256: str
    request_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    front: bool = False
    retry_on_backend_loss: bool = False
    caller: str = "anonymous"
    """Who submitted it: the bearer token's name, the client certificate's subject."""
    fingerprint: str = ""
    source_field: str = "workflow"
    """The request field the graph came from, for error paths."""
    field_map: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(node id, input) -> request field, for typed templates' errors."""
    template: str = ""
    """The template it was made from ("" for a raw workflow)."""
    template_version: int = 0
    template_params: Mapping[str, Any] = field(default_factory=dict)
    """Every parameter's value as used (defaults and random seeds filled in)."""
    output_nodes: frozenset[str] = frozenset()
    """Only these nodes' files are stored (the template's ``outputs``); empty: all."""
    callback_url: str = ""
    """Where the job is POSTed when it ends (checked against --callback-allow)."""


class Job:
    def __init__(self, job_id: str, spec: JobSpec, *, clock: Clock = time.time) -> None:
        self.job_id = job_id
        self.spec = spec
        self._clock = clock
        self._state = JobState.QUEUED
        # Told of every change of state (the registry keeps its counts with it).
        self.state_observer: Callable[[Job, JobState, JobState], None] | None = None
        self.create_time = clock()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.backend = ""
        self.queue_position = 0
        self.cancel_requested = False
        self.failure: JobFailure | None = None
        self.outputs: dict[str, list[OutputFile]] = {}
        self.artifacts: list[Artifact] = []
        self.log = EventLog()
        self.tracker = ProgressTracker(spec.workflow)
        self._done = asyncio.Event()
        # Set once the job is in the job store (a duplicate request waits for it).
        self.recorded = asyncio.Event()
        self.attempts = 0
        # ComfyUI's queue number for it, once submitted (kept in its record).
        self.queue_number = 0.0
        # Set once ComfyUI reported success and the outputs are being stored.
        self.collecting = False
        self.upload_start_time: float | None = None
        # Told of every event (the durable job store listens here).
        self.listener: Callable[[Job, ev.Event], None] | None = None
        # The newest preview image (memory only, not an event; see previews.py).
        self.preview = PreviewSlot()
        # The completion callback's delivery, as the deliverer last saw it:
        # "" (none), "pending", "delivered" or "failed".
        self.callback_state = "pending" if spec.callback_url else ""
        self.callback_attempts = 0
        self.callback_last_error = ""

    # -- views ---------------------------------------------------------------

    @property
    def state(self) -> JobState:
        return self._state

    @state.setter
    def state(self, state: JobState) -> None:
        old, self._state = self._state, state
        if old is not state and self.state_observer is not None:
            self.state_observer(self, old, state)

    @property
    def log_context(self) -> dict[str, str]:
        """``extra=`` for log lines about this job (JSON logs show them as fields)."""
        return {"job_id": self.job_id, "backend": self.backend}

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def progress(self) -> ProgressView:
        return self.tracker.view()

    async def wait_terminal(self) -> None:
        await self._done.wait()

    # -- transitions -----------------------------------------------------------

    def _emit(self, payload: ev.Payload, state: JobState | None = None) -> ev.Event:
        if state is not None:
            self.state = state
        event = ev.Event(
            job_id=self.job_id,
            sequence=self.log.next_sequence(),
            state=self.state,
            time=self._clock(),
            payload=payload,
        )
        self.log.append(event)
        if self.listener is not None:
            self.listener(self, event)
        if event.terminal:
            self.end_time = event.time
            self.queue_position = 0
            self.preview.clear()
            self._done.set()
        return event

    def queued(self, position: int, backend: str) -> None:
        if self.state is not JobState.QUEUED:
            return
        if position == self.queue_position and backend == self.backend and self.log.last_sequence:
            return
        self.queue_position = position
        self.backend = backend
        self._emit(ev.Queued(position=position, backend=backend))

    def started(self) -> None:
        if self.state is not JobState.QUEUED:
            return
        self.start_time = self._clock()
        self.queue_position = 0
        self._emit(ev.Started(), JobState.RUNNING)

    def _ensure_running(self) -> bool:
        if self.state is JobState.QUEUED:
            self.started()
        return self.state is JobState.RUNNING

    def nodes_cached(self, node_ids: list[str]) -> None:
        if not self._ensure_running():
            return
        self.tracker.cached(node_ids)
        self._emit(ev.NodesCached(node_ids=tuple(node_ids)))

    def node_started(self, node_id: str) -> None:
        if not self._ensure_running() or node_id == self.tracker.current_node:
            return
        finished = self.tracker.started(node_id)
        if finished is not None:
            self._emit(
                ev.NodeFinished(node_id=finished, class_type=self.tracker.class_of(finished))
            )
        self._emit(ev.NodeStarted(node_id=node_id, class_type=self.tracker.class_of(node_id)))

    def node_progress(self, node_id: str, value: int, maximum: int) -> None:
        if not self._ensure_running():
            return
        if node_id != self.tracker.current_node:
            self.node_started(node_id)
        node_fraction = self.tracker.stepped(node_id, value, maximum)
        self._emit(
            ev.NodeProgressed(
                node_id=node_id,
                class_type=self.tracker.class_of(node_id),
                value=value,
                max=maximum,
                node_fraction=node_fraction,
                job_fraction=self.tracker.fraction,
            )
        )

    def node_finished(self, node_id: str) -> None:
        if self.state is not JobState.RUNNING:
            return
        if self.tracker.finished(node_id):
            self._emit(ev.NodeFinished(node_id=node_id, class_type=self.tracker.class_of(node_id)))

    def output_reported(self, node_id: str, files: list[OutputFile]) -> None:
        if self.state is not JobState.RUNNING:
            return
        self.outputs[node_id] = files

    def uploading(self, outputs: Mapping[str, list[OutputFile]]) -> None:
        """ComfyUI finished; ``outputs`` (from history) are what must be stored."""
        if self.terminal:
            return
        self._ensure_running()
        self.artifacts = []  # after a restart mid-upload, everything is stored again
        current = self.tracker.current_node
        if current:
            self.node_finished(current)
        self.tracker.execution_done()
        wanted = self.spec.output_nodes
        self.outputs = {n: f for n, f in outputs.items() if not wanted or n in wanted}
        count = sum(len(files) for files in self.outputs.values())
        self.upload_start_time = self._clock()
        self.tracker.upload(0, count)
        self._emit(ev.Uploading(artifact_count=count), JobState.UPLOADING)

    def artifact_stored(self, artifact: Artifact) -> None:
        if self.state is not JobState.UPLOADING:
            return
        self.artifacts.append(artifact)
        total = sum(len(files) for files in self.outputs.values())
        self.tracker.upload(len(self.artifacts), total)
        self._emit(ev.ArtifactStored(artifact=artifact))

    def succeeded(self) -> None:
        if self.state is not JobState.UPLOADING:
            return
        self.tracker.complete()
        self._emit(ev.Succeeded(artifacts=tuple(self.artifacts)), JobState.SUCCEEDED)

    def failed(self, failure: JobFailure) -> None:
        if self.terminal:
            return
        self.failure = failure
        self._emit(ev.Failed(failure=failure), JobState.FAILED)

    def cancelled(self) -> None:
        if self.terminal:
            return
        was_running = self.state is not JobState.QUEUED
        self._emit(ev.Cancelled(was_running=was_running), JobState.CANCELLED)

    def restore(
        self,
        *,
        state: JobState,
        backend: str,
        create_time: float,
        start_time: float | None,
        end_time: float | None,
        queue_number: float,
        cancel_requested: bool,
        attempts: int,
        failure: JobFailure | None,
        artifacts: list[Artifact],
        outputs: dict[str, list[OutputFile]],
        events: list[ev.Event],
        sequence_gap: bool = True,
    ) -> None:
        """Put back a job read from the durable store after a restart."""
        self.state = state
        self.backend = backend
        self.create_time = create_time
        self.start_time = start_time
        self.end_time = end_time
        self.queue_number = queue_number
        self.cancel_requested = cancel_requested
        self.attempts = attempts
        self.failure = failure
        self.artifacts = artifacts
        self.outputs = outputs
        self.log.restore(events, ended=state.terminal, gap=sequence_gap)
        for event in events:
            self._replay_progress(event.payload)
        self.recorded.set()
        if state is JobState.SUCCEEDED:
            self.tracker.complete()
        if state.terminal:
            self._done.set()

    def follow(self, record: Job | None, events: list[ev.Event]) -> None:
        """Catch up with the job as another gateway replica, which holds it,
        recorded it: ``record`` read back from the store (None: only step
        progress happened), and its new events."""
        if record is not None:
            self.backend = record.backend
            self.start_time = record.start_time
            self.queue_number = record.queue_number
            self.cancel_requested = self.cancel_requested or record.cancel_requested
            self.attempts = record.attempts
            self.failure = record.failure
            self.artifacts = record.artifacts
            self.outputs = record.outputs
        for event in events:
            if not self.log.follow(event):
                continue
            self._replay_progress(event.payload)
            match event.payload:
                case ev.Queued(position=position):
                    self.queue_position = position
            self.state = event.state
            if event.terminal:
                self.end_time = event.time
                self.queue_position = 0
                self.preview.clear()
                if event.state is JobState.SUCCEEDED:
                    self.tracker.complete()
                self._done.set()

    def _replay_progress(self, payload: ev.Payload) -> None:
        match payload:
            case ev.NodesCached(node_ids=ids):
                self.tracker.cached(list(ids))
            case ev.NodeStarted(node_id=node):
                self.tracker.started(node)
            case ev.NodeProgressed(node_id=node, value=value, max=maximum):
                self.tracker.stepped(node, value, maximum)
            case ev.NodeFinished(node_id=node):
                self.tracker.finished(node)
            case ev.Uploading():
                self.tracker.execution_done()

    def requeued(self) -> None:
        """Back to QUEUED, in the gateway's line, after its backend gave it up."""
        self.state = JobState.QUEUED
        self.backend = ""
        self.start_time = None
        self.outputs = {}

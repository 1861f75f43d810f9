"""Following jobs on their backends: socket messages, reconciliation, cancel.

ComfyUI sends a prompt's messages only to the socket registered under its
client id at that instant and replays nothing, so the socket is the fast
path and reconciliation is the truth: after every (re)connect, each open
job is checked against ``/queue`` and ``/history/{id}``. A job that is in
neither was deleted or lost in a restart.

While jobs are open the backend is also probed every interval, cheaply:
``GET /prompt`` says how many prompts ComfyUI holds. Fewer than the gateway's
own jobs there means some ended or vanished unheard, and triggers a full
check at once; otherwise a full check runs every ``FULL_RECONCILE_EVERY``
intervals. ``/queue`` carries a deep copy of every queued prompt's graph,
which ComfyUI builds on its event loop; asking for it every two seconds with
a thousand jobs waiting slowed ComfyUI and the gateway alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends import Backend, BackendPool
from ..backends.inventory import Inventory
from ..comfyui import messages as m
from ..comfyui.errors import ComfyUIUnavailable
from ..comfyui.outputs import files_of, history_outcome, history_outputs
from ..observability.metrics import Metrics
from ..scheduler.core import Phase
from ..tasks import CrashHandler, TaskSet
from .collector import ArtifactCollector
from .job import Job
from .manifest import write_manifest_quietly
from .model import FailureReason, JobFailure, JobState
from .previews import NodePreview
from .registry import JobRegistry

if TYPE_CHECKING:
    from ..scheduler.executor import Fleet

log = logging.getLogger(__name__)

# An interrupt we send can, in a rare race, land on the next prompt; one that
# arrives this soon after ours is treated as ours and the victim is resubmitted.
INTERRUPT_RACE_SECONDS = 5.0
FULL_RECONCILE_EVERY = 15
"""Probe intervals between full checks when the probes find nothing amiss."""
INVENTORY_REFRESH_SECONDS = 60.0
"""How often each backend's ``/object_info`` is read again (also on every reconnect)."""


class JobTracker:
    def __init__(
        self,
        *,
        registry: JobRegistry,
        pool: BackendPool,
        fleet: Fleet,
        collector: ArtifactCollector,
        tasks: TaskSet,
        reconcile_interval_seconds: float,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.registry = registry
        self.pool = pool
        self.fleet = fleet
        self.core = fleet.core
        self.collector = collector
        self.tasks = tasks
        self._interval = reconcile_interval_seconds
        self._locks: dict[str, asyncio.Lock] = {}
        self._loss_timers: dict[str, asyncio.Task[None]] = {}
        # Loops and timers that never end by themselves, kept apart from the
        # per-job work a graceful shutdown waits for.
        self.background = TaskSet("job tracker")
        self.backend_lost_after_seconds = 15.0
        self._inventory_errors: dict[str, str] = {}
        self.on_give_up: CrashHandler | None = None
        """Told when the reconcile loop keeps crashing and is given up on (liveness)."""
        self.on_job_ended: Callable[[Job], None] | None = None
        """Told when a job reaches a terminal state (completion callbacks)."""

    def start(self) -> None:
        # Supervised: an unexpected error in one pass is logged, counted and
        # the loop restarts; a loop that cannot recover fails liveness.
        self.background.spawn_supervised(
            self._reconcile_forever,
            "reconcile loop",
            on_crash=self.metrics.task_crashed,
            on_give_up=self.on_give_up,
        )

    # -- bookkeeping ------------------------------------------------------------

    def _job_on(self, backend: Backend, prompt_id: str | None) -> Job | None:
        if not prompt_id:
            return None
        job = self.registry.get(prompt_id)
        if job is None or job.backend != backend.url or job.terminal:
            return None
        return job

    def _ended(self, job: Job) -> None:
        log.info(
            "job %s%s",
            job.state.value,
            f": {job.failure.reason}: {job.failure.message}" if job.failure else "",
            extra=job.log_context,
        )
        self.metrics.job_finished(job.state)
        if job.start_time is not None:
            waited = max(0.0, job.start_time - job.create_time)
            self.metrics.queue_wait.observe(waited)
            self.metrics.caller_waited(job.spec.caller, waited)
            finished = job.upload_start_time or job.end_time
            if finished is not None:
                self.metrics.execution.observe(max(0.0, finished - job.start_time))
        if job.upload_start_time is not None and job.end_time is not None:
            self.metrics.upload.observe(max(0.0, job.end_time - job.upload_start_time))
        self.fleet.tell(self.core.finished, job.job_id)
        self.registry.finished(job)
        if self.on_job_ended is not None:
            self.on_job_ended(job)

    def finish_failed(self, job: Job, failure: JobFailure) -> None:
        if job.terminal:
            return
        job.failed(failure)
        self._ended(job)
        self.tasks.spawn(
            write_manifest_quietly(self.collector.store, job), f"manifest {job.job_id}"
        )

    def finish_cancelled(self, job: Job) -> None:
        if job.terminal:
            return
        job.cancelled()
        self._ended(job)
        self.tasks.spawn(
            write_manifest_quietly(self.collector.store, job), f"manifest {job.job_id}"
        )

    def fail_lost(self, job: Job, message: str) -> None:
        self.finish_failed(job, JobFailure(reason=FailureReason.BACKEND_LOST, message=message))

    # -- socket messages ----------------------------------------------------------

    def on_message(self, backend: Backend, message: m.Message) -> None:
        # Once the job service is closed (shutting down) sockets may still
        # deliver a message or two; the next start reconciles with ComfyUI.
        if isinstance(message, m.Status) or self.tasks.closed:
            return
        job = self._job_on(backend, getattr(message, "prompt_id", None))
        if job is None:
            return
        match message:
            case m.ExecutionStart():
                job.started()
                self.fleet.tell(self.core.started, job.job_id)
            case m.ExecutionCached(nodes=nodes):
                job.nodes_cached(nodes)
            case m.Executing(node=None):
                # ComfyUI's last message for a prompt, sent after its history
                # entry is written: the outcome can be read now.
                self._collect(job, backend)
            case m.Executing(node=str(node)):
                job.node_started(node)
            case m.Progress(node=node, value=value, max=maximum):
                job.node_progress(node, value, maximum)
            case m.NodeStates(states=states):
                for node_id, state in states.items():
                    if state == "finished":
                        job.node_finished(node_id)
            case m.Executed(node=node, output=output):
                job.output_reported(node, files_of(node, output))
            case m.ExecutionError() as error:
                self.finish_failed(
                    job,
                    JobFailure(
                        reason=FailureReason.EXECUTION_ERROR,
                        message=f"node {error.node_id} ({error.node_type}) raised "
                        f"{error.exception_type}: {error.exception_message}",
                        node_id=error.node_id,
                        class_type=error.node_type,
                        exception_type=error.exception_type,
                    ),
                )
            case m.ExecutionInterrupted() as interrupted:
                self._interrupted(job, backend, interrupted.node_id, interrupted.node_type)
            case m.Preview(node=node, content_type=kind, image=image, value=value, max=maximum):
                cls = job.tracker.class_of(node)
                job.preview.publish(NodePreview(node, cls, kind, image, value, maximum))

    def _interrupted(self, job: Job, backend: Backend, node_id: str, class_type: str) -> None:
        if job.cancel_requested:
            self.finish_cancelled(job)
            return
        recent = self.fleet.last_interrupt.get(backend.url, 0.0)
        if time.monotonic() - recent < INTERRUPT_RACE_SECONDS and job.attempts < 3:
            log.warning(
                "job %s was hit by an interrupt meant for another job; resubmitting", job.job_id
            )
            self.fleet.tell(self.core.requeue, job.job_id)
            return
        self.finish_failed(
            job,
            JobFailure(
                reason=FailureReason.INTERRUPTED,
                message="ComfyUI interrupted the job (not through this gateway)",
                node_id=node_id,
                class_type=class_type,
            ),
        )

    # -- completion ------------------------------------------------------------------

    def _collect(self, job: Job, backend: Backend) -> None:
        if job.collecting or job.terminal:
            return
        job.collecting = True
        self.tasks.spawn(self._collect_outputs(job, backend), f"collect {job.job_id}")

    async def _collect_outputs(self, job: Job, backend: Backend) -> None:
        entry = None
        delay = 0.05
        for _ in range(4):
            try:
                entry = await backend.client.history(job.job_id)
            except ComfyUIUnavailable:
                entry = None
            if entry is not None:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        if entry is None:
            job.collecting = False
            return  # reconciliation will find out what happened
        await self.apply_history(job, backend, entry)

    async def apply_history(self, job: Job, backend: Backend, entry: dict[str, object]) -> None:
        """Act on a finished prompt's history entry: store its outputs, or fail it."""
        outcome, data = history_outcome(entry)
        if outcome == "success":
            job.collecting = True
            # The GPU is free while the outputs are copied.
            self.fleet.tell(self.core.finished, job.job_id)
            job.uploading(history_outputs(entry))
            await self.collector.collect(backend.client, job)
            self._ended(job)
            if job.state is JobState.FAILED:
                await write_manifest_quietly(self.collector.store, job)
        elif outcome == "interrupted":
            self._interrupted(
                job, backend, str(data.get("node_id", "")), str(data.get("node_type", ""))
            )
        else:
            self.finish_failed(
                job,
                JobFailure(
                    reason=FailureReason.EXECUTION_ERROR,
                    message=f"node {data.get('node_id', '?')} ({data.get('node_type', '?')}) "
                    f"raised "
                    f"{data.get('exception_type', 'an error')}: "
                    f"{str(data.get('exception_message', '')).strip()}",
                    node_id=str(data.get("node_id", "")),
                    class_type=str(data.get("node_type", "")),
                    exception_type=str(data.get("exception_type", "")),
                ),
            )

    # -- backends coming and going ---------------------------------------------------

    async def on_connect(self, backend: Backend, first: bool) -> None:
        if self.tasks.closed:
            return
        timer = self._loss_timers.pop(backend.url, None)
        if timer is not None:
            timer.cancel()
        # Its inventory first: nothing is routed to a backend before it is known.
        await self.refresh_inventory(backend)
        # Messages sent while we had no socket are gone; after a gateway
        # restart the jobs it adopted are unknown too. Ask ComfyUI.
        if self.core.jobs_on(backend.url):
            self.tasks.spawn(self.reconcile_quietly(backend), f"reconcile {backend.url}")

    async def refresh_inventory(self, backend: Backend) -> None:
        """Read ``/object_info`` again and tell the scheduler the backend is up."""
        inventory: Inventory | None = None
        try:
            inventory = Inventory.from_object_info(await backend.client.object_info())
        except ComfyUIUnavailable as exc:
            # Once per cause, not at every retry.
            if self._inventory_errors.get(backend.url) != str(exc):
                self._inventory_errors[backend.url] = str(exc)
                log.warning(
                    "could not read /object_info from %s (no jobs go there until it answers): %s",
                    backend.url,
                    exc,
                    extra={"backend": backend.url},
                )
        else:
            self._inventory_errors.pop(backend.url, None)
        if backend.healthy and self.pool.get(backend.url) is backend:
            backend.inventory = inventory or backend.inventory
            if self.fleet.drives(backend.url):
                self.fleet.tell(self.core.backend_up, backend.url, inventory)
            if backend.inventory is not None:
                backend.inventory_read.set()

    async def reconcile_quietly(self, backend: Backend) -> None:
        try:
            await self.reconcile(backend)
        except ComfyUIUnavailable as exc:
            log.info("reconcile with %s failed: %s", backend.url, exc)

    def on_disconnect(self, backend: Backend) -> None:
        """Give the backend a grace period to come back, then move its jobs."""
        self.fleet.tell(self.core.backend_down, backend.url)
        if backend.url not in self._loss_timers and not self.background.closed:
            self._loss_timers[backend.url] = self.background.spawn(
                self._lose_later(backend), f"backend loss timer {backend.url}"
            )

    async def _lose_later(self, backend: Backend) -> None:
        try:
            await asyncio.sleep(self.backend_lost_after_seconds)
        finally:
            if self._loss_timers.get(backend.url) is asyncio.current_task():
                del self._loss_timers[backend.url]
        if not backend.healthy:
            self.backend_lost(backend, "stayed unreachable")

    def backend_lost(self, backend: Backend, why: str) -> None:
        """Its waiting prompts go back to the gateway's line; running ones fail (or retry)."""
        held = self.core.jobs_on(backend.url)
        if held:
            log.warning(
                "ComfyUI at %s %s: %d of its jobs go back to the line or fail",
                backend.url,
                why,
                len(held),
                extra={"backend": backend.url},
            )
        self.fleet.tell(self.core.backend_lost, backend.url)

    def backend_removed(self, backend: Backend) -> None:
        self.backend_lost(backend, "left DNS")
        self.fleet.tell(self.core.remove_backend, backend.url)

    # -- reconciliation -----------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        intervals = 0
        refresh_every = max(1, round(INVENTORY_REFRESH_SECONDS / max(self._interval, 0.01)))
        while True:
            await asyncio.sleep(self._interval)
            intervals += 1
            full = intervals % FULL_RECONCILE_EVERY == 0
            for backend in self.pool:
                if not backend.healthy:
                    continue
                # A backend whose inventory could not be read gets no jobs:
                # read it again at every interval until it answers.
                if backend.inventory is None or intervals % refresh_every == 0:
                    await self.refresh_inventory(backend)
                if not self._settled(backend):
                    continue
                if full or await self._missing_some(backend):
                    await self.reconcile_quietly(backend)

    def _settled(self, backend: Backend) -> list[Job]:
        """Our jobs ``backend`` should hold now (handed over, not ending)."""
        jobs = []
        for job_id in self.core.jobs_on(backend.url):
            ticket = self.core.tickets.get(job_id)
            job = self.registry.get(job_id)
            if (
                ticket is not None
                and ticket.phase in (Phase.PENDING, Phase.RUNNING)
                and job is not None
                and not job.terminal
                and not job.collecting
            ):
                jobs.append(job)
        return jobs

    async def _missing_some(self, backend: Backend) -> bool:
        """True when ComfyUI holds fewer prompts than the gateway has jobs there."""
        try:
            remaining = await backend.client.queue_remaining()
        except ComfyUIUnavailable as exc:
            log.info("queue probe of %s failed: %s", backend.url, exc)
            return False
        return remaining < len(self._settled(backend))

    async def reconcile(self, backend: Backend) -> None:
        """Bring every open job on ``backend`` in line with what ComfyUI knows."""
        lock = self._locks.setdefault(backend.url, asyncio.Lock())
        async with lock:
            # Each with its submission count: a job handed to ComfyUI again
            # after ``queue`` was read is not in it, and is not lost.
            jobs = [(j, j.attempts) for j in self._settled(backend)]
            log.debug("reconciling %d jobs with %s", len(jobs), backend.url)
            if not jobs:
                return
            queue = await backend.client.queue()
            for job, attempts in jobs:
                if not self._still_there(job, backend, attempts):
                    continue
                if job.job_id in queue.running:
                    job.started()
                    self.fleet.tell(self.core.started, job.job_id)
                    continue
                if job.job_id in queue.pending:
                    continue
                entry = await backend.client.history(job.job_id)
                if not self._still_there(job, backend, attempts):
                    continue
                if entry is not None:
                    job.collecting = True
                    self.tasks.spawn(
                        self.apply_history(job, backend, entry), f"collect {job.job_id}"
                    )
                else:
                    log.warning(
                        "ComfyUI at %s no longer knows the job (restarted, or its queue "
                        "was cleared)",
                        backend.url,
                        extra=job.log_context,
                    )
                    self.fleet.tell(self.core.prompt_missing, job.job_id)

    def _still_there(self, job: Job, backend: Backend, attempts: int) -> bool:
        ticket = self.core.tickets.get(job.job_id)
        return (
            not job.terminal
            and not job.collecting
            and job.backend == backend.url
            and job.attempts == attempts
            and ticket is not None
            and ticket.phase in (Phase.PENDING, Phase.RUNNING)
        )

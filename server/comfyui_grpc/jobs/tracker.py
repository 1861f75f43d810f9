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
from collections.abc import Callable, Coroutine
from typing import Any

from ..backends import Backend, BackendPool
from ..comfyui import messages as m
from ..comfyui.errors import ComfyUIUnavailable
from ..comfyui.outputs import files_of, history_outcome, history_outputs
from ..observability.metrics import Metrics
from ..tasks import TaskSet, within
from .collector import ArtifactCollector
from .job import Job
from .manifest import write_manifest_quietly
from .model import FailureReason, JobFailure, JobState
from .registry import JobRegistry

log = logging.getLogger(__name__)

Resubmit = Callable[[Job, str], Coroutine[Any, Any, None]]

# An interrupt we send can, in a rare race, land on the next prompt; one that
# arrives this soon after ours is treated as ours and the victim is resubmitted.
INTERRUPT_RACE_SECONDS = 5.0
CANCEL_RESEND_SECONDS = 1.0
FULL_RECONCILE_EVERY = 15
"""Probe intervals between full checks when the probes find nothing amiss."""


class JobTracker:
    def __init__(
        self,
        *,
        registry: JobRegistry,
        pool: BackendPool,
        collector: ArtifactCollector,
        tasks: TaskSet,
        resubmit: Resubmit,
        reconcile_interval_seconds: float,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.registry = registry
        self.pool = pool
        self.collector = collector
        self.tasks = tasks
        self._resubmit = resubmit
        self._interval = reconcile_interval_seconds
        self._locks: dict[str, asyncio.Lock] = {}
        self._loss_timers: dict[str, asyncio.Task[None]] = {}
        # Prompts cancelled while their backend was unreachable, to delete on return.
        self._deletes_owed: dict[str, set[str]] = {}
        # Loops and timers that never end by themselves, kept apart from the
        # per-job work a graceful shutdown waits for.
        self.background = TaskSet("job tracker")
        self.backend_lost_after_seconds = 15.0
        self._last_interrupt: dict[str, float] = {}

    def start(self) -> None:
        self.background.spawn(self._reconcile_forever(), "reconcile loop")

    # -- bookkeeping ------------------------------------------------------------

    def _job_on(self, backend: Backend, prompt_id: str | None) -> Job | None:
        if not prompt_id:
            return None
        job = self.registry.get(prompt_id)
        if job is None or job.backend != backend.url or job.terminal:
            return None
        return job

    def submitted(self, job: Job, backend: Backend) -> None:
        if job.state is not JobState.QUEUED:
            return  # ComfyUI's messages about it came before its answer
        backend.waiting.add(job.job_id)
        if job.spec.front:
            self._update_positions(backend)
        else:
            # ComfyUI numbers jobs in order: a normal one joins the back.
            job.queued(len(backend.waiting), backend.url)

    def _update_positions(self, backend: Backend) -> None:
        """Renumber the jobs waiting on ``backend`` (after one left the queue)."""
        waiting = []
        for job_id in list(backend.waiting):
            job = self.registry.get(job_id)
            if job is None or job.state is not JobState.QUEUED or job.backend != backend.url:
                backend.waiting.discard(job_id)
            else:
                waiting.append(job)
        waiting.sort(key=lambda j: j.queue_number)
        for position, job in enumerate(waiting, start=1):
            job.queued(position, backend.url)

    def _ended(self, job: Job) -> None:
        log.info(
            "job %s%s",
            job.state.value,
            f": {job.failure.reason}: {job.failure.message}" if job.failure else "",
            extra=job.log_context,
        )
        self.metrics.job_finished(job.state)
        if job.start_time is not None:
            self.metrics.queue_wait.observe(max(0.0, job.start_time - job.create_time))
            finished = job.upload_start_time or job.end_time
            if finished is not None:
                self.metrics.execution.observe(max(0.0, finished - job.start_time))
        if job.upload_start_time is not None and job.end_time is not None:
            self.metrics.upload.observe(max(0.0, job.end_time - job.upload_start_time))
        backend = self.pool.get(job.backend)
        if backend is not None:
            backend.outstanding.discard(job.job_id)
            self._update_positions(backend)
        self.registry.finished(job)

    def _finish_failed(self, job: Job, failure: JobFailure) -> None:
        if job.terminal:
            return
        job.failed(failure)
        self._ended(job)
        self.tasks.spawn(
            write_manifest_quietly(self.collector.store, job), f"manifest {job.job_id}"
        )

    def _finish_cancelled(self, job: Job) -> None:
        if job.terminal:
            return
        job.cancelled()
        self._ended(job)
        self.tasks.spawn(
            write_manifest_quietly(self.collector.store, job), f"manifest {job.job_id}"
        )

    def fail_lost(self, job: Job, message: str) -> None:
        self._finish_failed(job, JobFailure(reason=FailureReason.BACKEND_LOST, message=message))

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
                self._update_positions(backend)
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
                self._finish_failed(
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

    def _interrupted(self, job: Job, backend: Backend, node_id: str, class_type: str) -> None:
        if job.cancel_requested:
            self._finish_cancelled(job)
            return
        recent = self._last_interrupt.get(backend.url, 0.0)
        if time.monotonic() - recent < INTERRUPT_RACE_SECONDS and job.attempts < 3:
            log.warning(
                "job %s was hit by an interrupt meant for another job; resubmitting", job.job_id
            )
            backend.outstanding.discard(job.job_id)
            job.requeued()
            self.tasks.spawn(self._resubmit(job, ""), f"resubmit {job.job_id}")
            return
        self._finish_failed(
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
        await self._apply_history(job, backend, entry)

    async def _apply_history(self, job: Job, backend: Backend, entry: dict[str, object]) -> None:
        outcome, data = history_outcome(entry)
        if outcome == "success":
            job.collecting = True
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
            self._finish_failed(
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

    # -- reconciliation -----------------------------------------------------------

    async def on_connect(self, backend: Backend, first: bool) -> None:
        if self.tasks.closed:
            return
        timer = self._loss_timers.pop(backend.url, None)
        if timer is not None:
            timer.cancel()
        owed = self._deletes_owed.pop(backend.url, None)
        if owed:
            self.tasks.spawn(
                self._delete_quietly(backend, sorted(owed)), f"deletes owed to {backend.url}"
            )
        # Messages sent while we had no socket are gone; after a gateway
        # restart the jobs it adopted are unknown too. Ask ComfyUI.
        if backend.outstanding:
            self.tasks.spawn(self._reconcile_quietly(backend), f"reconcile {backend.url}")

    async def _delete_quietly(self, backend: Backend, prompt_ids: list[str]) -> None:
        """Drop prompts cancelled while ``backend`` was unreachable (interrupt any it started)."""
        try:
            await backend.client.delete_pending(prompt_ids)
            for prompt_id in prompt_ids:
                await backend.client.interrupt(prompt_id)
        except ComfyUIUnavailable as exc:
            log.warning(
                "could not drop %d cancelled prompts from %s: %s", len(prompt_ids), backend.url, exc
            )

    async def _reconcile_quietly(self, backend: Backend) -> None:
        try:
            await self.reconcile(backend)
        except ComfyUIUnavailable as exc:
            log.info("reconcile with %s failed: %s", backend.url, exc)

    def on_disconnect(self, backend: Backend) -> None:
        """Give the backend a grace period to come back, then move its jobs."""
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
        if not backend.healthy and self.backend_lost(
            backend, "stayed unreachable", may_return=True
        ):
            self.on_disconnect(backend)  # decide again for the jobs it kept

    def backend_lost(self, backend: Backend, why: str, *, may_return: bool = False) -> int:
        """Move a lost backend's waiting jobs elsewhere; fail (or retry) its running ones.

        With no other backend up, a backend that ``may_return`` keeps the jobs
        that would move: ComfyUI restarting (models loading) outlasts the
        grace period, and failing every waiting job for it helps nobody. Once
        it is back, reconciliation finds them and resubmits what it lost.
        Returns how many jobs it kept.
        """
        stranded = may_return and not any(b.url != backend.url for b in self.pool.healthy)
        kept = 0
        for job_id in list(backend.outstanding):
            job = self.registry.get(job_id)
            if job is None or job.terminal or job.collecting or job.backend != backend.url:
                continue
            movable = job.state is JobState.QUEUED or job.spec.retry_on_backend_loss
            if movable and stranded and not job.cancel_requested:
                kept += 1
                continue
            backend.outstanding.discard(job_id)
            if job.cancel_requested:
                self._finish_cancelled(job)
            elif movable:
                log.warning(
                    "moving job off lost backend %s",
                    backend.url,
                    extra=job.log_context,
                )
                job.requeued()
                self.tasks.spawn(self._resubmit(job, backend.url), f"resubmit {job.job_id}")
            else:
                self.fail_lost(
                    job, f"ComfyUI at {backend.url} {why} while running the job; submit it again"
                )
        if kept:
            log.warning(
                "ComfyUI at %s %s and no other backend is up: %d jobs wait for one",
                backend.url,
                why,
                kept,
                extra={"backend": backend.url},
            )
        return kept

    async def _reconcile_forever(self) -> None:
        intervals = 0
        while True:
            await asyncio.sleep(self._interval)
            intervals += 1
            full = intervals % FULL_RECONCILE_EVERY == 0
            for backend in self.pool:
                if not (backend.outstanding and backend.healthy):
                    continue
                if full or await self._missing_some(backend):
                    await self._reconcile_quietly(backend)

    def _held_by(self, backend: Backend) -> int:
        """How many of the gateway's jobs ``backend`` should have queued or running."""
        held = 0
        for job_id in backend.outstanding:
            job = self.registry.get(job_id)
            if (
                job is not None
                and not job.terminal
                and not job.collecting
                and job.backend == backend.url
                and job.submitted.is_set()
            ):
                held += 1
        return held

    async def _missing_some(self, backend: Backend) -> bool:
        """True when ComfyUI holds fewer prompts than the gateway has jobs there."""
        try:
            remaining = await backend.client.queue_remaining()
        except ComfyUIUnavailable as exc:
            log.info("queue probe of %s failed: %s", backend.url, exc)
            return False
        return remaining < self._held_by(backend)

    async def reconcile(self, backend: Backend) -> None:
        """Bring every open job on ``backend`` in line with what ComfyUI knows."""
        lock = self._locks.setdefault(backend.url, asyncio.Lock())
        async with lock:
            # Each with its submission count: a job handed to ComfyUI again
            # after ``queue`` was read is not in it, and is not lost.
            jobs = [
                (j, j.attempts)
                for j in (self.registry.get(pid) for pid in list(backend.outstanding))
                if j is not None and not j.terminal and j.submitted.is_set() and not j.collecting
            ]
            if not jobs:
                return
            queue = await backend.client.queue()
            for job, attempts in jobs:
                if (
                    job.terminal
                    or job.collecting
                    or job.backend != backend.url
                    or job.attempts != attempts
                ):
                    continue
                if job.job_id in queue.running:
                    job.started()
                    continue
                if job.job_id in queue.pending:
                    job.queued(queue.position(job.job_id), backend.url)
                    continue
                entry = await backend.client.history(job.job_id)
                if job.terminal or job.collecting or job.attempts != attempts:
                    continue
                if entry is not None:
                    job.collecting = True
                    self.tasks.spawn(
                        self._apply_history(job, backend, entry), f"collect {job.job_id}"
                    )
                elif job.cancel_requested:
                    self._finish_cancelled(job)
                elif job.state is JobState.QUEUED or job.spec.retry_on_backend_loss:
                    backend.outstanding.discard(job.job_id)
                    job.requeued()
                    self.tasks.spawn(self._resubmit(job, ""), f"resubmit {job.job_id}")
                else:
                    self.fail_lost(
                        job,
                        f"ComfyUI at {backend.url} no longer knows the job (restarted, or its "
                        "queue was cleared) and it had already started",
                    )

    # -- cancel ---------------------------------------------------------------------

    async def cancel(self, job: Job, budget_seconds: float) -> None:
        backend = self.pool.get(job.backend)
        if backend is None or job.terminal:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_seconds
        if job.state is JobState.QUEUED:
            try:
                await backend.client.delete_pending([job.job_id])
            except ComfyUIUnavailable:
                if backend.healthy:
                    raise
                # Unreachable (its jobs may be waiting for it): a ComfyUI that
                # restarted has forgotten the prompt, one that was only cut off
                # is told to drop it when it is back.
                self._deletes_owed.setdefault(backend.url, set()).add(job.job_id)
                backend.outstanding.discard(job.job_id)
                self._finish_cancelled(job)
                return
            await self.reconcile(backend)
        while not job.terminal and job.state is JobState.RUNNING:
            self._last_interrupt[backend.url] = time.monotonic()
            await backend.client.interrupt(job.job_id)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not await within(job.wait_terminal(), min(CANCEL_RESEND_SECONDS, remaining)):
                await self.reconcile(backend)
        if not job.terminal and job.state is JobState.UPLOADING:
            remaining = deadline - loop.time()
            if remaining > 0:
                await within(job.wait_terminal(), remaining)

"""Runs the scheduler core's actions against ComfyUI and feeds their outcomes back.

Every change to the core goes through :meth:`Fleet.tell`, which applies the
core's decisions at once: the ones that touch only the gateway's jobs
(cancelled, lost, requeued, new positions) inline, the ones that touch
ComfyUI (submit, withdraw, interrupt, owed deletes) as tasks of the job
service, whose outcomes come back through :meth:`Fleet.tell` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..backends import Backend, BackendPool
from ..comfyui.errors import ComfyUIUnavailable, ComfyUIValidationError
from ..jobs.job import Job
from ..jobs.model import FailureReason, JobFailure, JobState
from ..jobs.registry import JobRegistry
from ..jobs.validation_errors import violations_from_comfyui
from ..state import JobStore
from ..tasks import TaskSet, within
from . import actions as act
from .core import Phase, Scheduler

log = logging.getLogger(__name__)

CANCEL_RESEND_SECONDS = 1.0
PROBE_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Follower(Protocol):
    """What the executor needs of the part that follows jobs on ComfyUI
    (:class:`~comfyui_grpc.jobs.tracker.JobTracker`)."""

    def finish_cancelled(self, job: Job) -> None: ...

    def finish_failed(self, job: Job, failure: JobFailure) -> None: ...

    def fail_lost(self, job: Job, message: str) -> None: ...

    async def apply_history(self, job: Job, backend: Backend, entry: dict[str, object]) -> None: ...

    async def reconcile(self, backend: Backend) -> None: ...


class SharedFleet(Protocol):
    """What the executor needs when other gateway replicas share the fleet
    (:class:`~comfyui_grpc.cluster.replica.Replica`)."""

    def drives(self, url: str) -> bool: ...

    def give_back(self, job_ids: Sequence[str]) -> None: ...

    def wake_puller(self) -> None: ...


class Fleet:
    def __init__(
        self,
        *,
        core: Scheduler,
        pool: BackendPool,
        registry: JobRegistry,
        job_store: JobStore,
        tasks: TaskSet,
    ) -> None:
        self.core = core
        self.pool = pool
        self.registry = registry
        self.job_store = job_store
        self.tasks = tasks
        self.tracker: Follower | None = None
        self.shared: SharedFleet | None = None
        """Set when other replicas share the backends and the line."""
        self.last_interrupt: dict[str, float] = {}
        """Backend URL -> when the gateway last sent it an interrupt."""
        self._positions_scheduled = False
        self._probing: set[str] = set()

    # -- the one way in -------------------------------------------------------

    def tell(self, change: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Apply one event to the core, then carry out what it decided."""
        change(*args, **kwargs)
        self.run_actions()

    def drives(self, url: str) -> bool:
        """Is ``url`` this gateway's to hand work to (always, without replicas)?"""
        return self.shared is None or self.shared.drives(url)

    def run_actions(self) -> None:
        for action in self.core.take_actions():
            self._run(action)
        if self.shared is not None:
            # Jobs wait in the shared line, not in this replica's.
            given = self.core.give_back()
            if given:
                self.shared.give_back(given)
            if self.core.room():
                self.shared.wake_puller()
        if self.core.positions_stale and not self._positions_scheduled:
            # Positions are recomputed once per loop turn, not once per event.
            self._positions_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._report_positions)
            except RuntimeError:
                self._report_positions()

    def _report_positions(self) -> None:
        self._positions_scheduled = False
        changes = self.core.reposition()
        if changes is not None:
            self._run(changes)

    def _run(self, action: act.Action) -> None:
        tracker = self.tracker
        assert tracker is not None
        match action:
            case act.Submit(job_id, backend_url, attempt):
                job = self.registry.get(job_id)
                backend = self.pool.get(backend_url)
                if job is None or backend is None or job.terminal:
                    self.core.submit_failed(job_id, attempt, refused=True)
                    self.run_actions()
                    return
                self.tasks.spawn(self._submit(job, backend, attempt), f"submit {job_id}")
            case act.Withdraw(job_id, backend_url, attempt):
                backend = self.pool.get(backend_url)
                self.tasks.spawn(self._withdraw(job_id, backend, attempt), f"withdraw {job_id}")
            case act.Interrupt(job_id, backend_url):
                job = self.registry.get(job_id)
                backend = self.pool.get(backend_url)
                if job is not None and backend is not None:
                    self.tasks.spawn(self._interrupt(job, backend), f"interrupt {job_id}")
            case act.DeleteOwed(backend_url, job_ids):
                backend = self.pool.get(backend_url)
                if backend is not None:
                    self.tasks.spawn(
                        self._delete_owed(backend, job_ids), f"deletes owed to {backend_url}"
                    )
            case act.Cancelled(job_id):
                job = self.registry.get(job_id)
                if job is not None:
                    tracker.finish_cancelled(job)
            case act.Lost(job_id, backend_url, forgotten):
                job = self.registry.get(job_id)
                if job is not None:
                    tracker.fail_lost(
                        job,
                        f"ComfyUI at {backend_url} no longer knows the job (restarted, or its "
                        "queue was cleared) and it had already started"
                        if forgotten
                        else f"ComfyUI at {backend_url} stayed unreachable while running the "
                        "job; submit it again",
                    )
            case act.Requeued(job_id, backend_url):
                job = self.registry.get(job_id)
                if job is not None and not job.terminal:
                    log.info("job back in the gateway's line", extra=job.log_context)
                    job.requeued()
                    job.queued(self.core.position(job_id), "")
            case act.Positions(changes):
                for job_id, position in changes:
                    job = self.registry.get(job_id)
                    if job is not None and job.state is JobState.QUEUED:
                        job.queued(position, "")

    # -- submission -------------------------------------------------------------

    async def _submit(self, job: Job, backend: Backend, attempt: int) -> None:
        """Hand ``job`` to ``backend``: recorded first, then POST /prompt."""
        job.backend = backend.url
        job.attempts += 1
        # Recorded, with its backend, before ComfyUI sees it: after a crash, a
        # recorded job that its backend does not know was never submitted.
        try:
            await self.job_store.save_now(job)
        except Exception as exc:
            # Not recorded, so not sent: it goes back to the line and is
            # handed out again once the backend is probed (the store may be back).
            log.warning("could not record the job before submitting it: %s", exc,
                        extra=job.log_context)  # fmt: skip
            job.backend = ""
            self.tell(self.core.submit_failed, job.job_id, attempt, refused=False)
            self._probe_later(backend)
            return
        if not self.drives(backend.url):
            # Its lease lapsed (or it is being handed over): another replica may own it now.
            job.backend = ""
            self.tell(self.core.submit_failed, job.job_id, attempt, refused=False)
            self._probe_later(backend)
            return
        try:
            result = await backend.client.submit(
                dict(job.spec.workflow),
                prompt_id=job.job_id,
                client_id=backend.client_id,
                front=job.spec.front,
            )
        except ComfyUIValidationError as exc:
            if not exc.error:
                # A 200 with node_errors: ComfyUI queued what validated; take it back.
                await self._take_back(backend, job.job_id)
            self.tell(self.core.submit_failed, job.job_id, attempt, refused=True)
            error = violations_from_comfyui(exc, job.spec.source_field, job.spec.field_map)
            assert self.tracker is not None
            self.tracker.finish_failed(
                job,
                JobFailure(
                    reason=FailureReason.VALIDATION_FAILED,
                    message=f"ComfyUI at {backend.url} refused the workflow: {error.message}",
                ),
            )
            return
        except ComfyUIUnavailable as exc:
            if exc.maybe_sent and await self._landed(backend, job):
                # The answer was lost, not the prompt: ComfyUI has it.
                backend.socket.expect_traffic()
                self.tell(self.core.submitted, job.job_id, attempt)
                return
            log.warning("submit to %s failed: %s", backend.url, exc, extra=job.log_context)
            job.backend = ""
            self.tell(self.core.submit_failed, job.job_id, attempt, refused=False)
            self._probe_later(backend)
            return
        job.queue_number = result.number
        log.info("submitted to ComfyUI", extra=job.log_context)
        backend.socket.expect_traffic()
        self.tell(self.core.submitted, job.job_id, attempt)
        if job.state is JobState.QUEUED and self.core.tickets[job.job_id].phase is Phase.PENDING:
            job.queued(self.core.place(job.job_id), backend.url)

    async def _landed(self, backend: Backend, job: Job) -> bool:
        """Did a submission whose answer was lost reach ComfyUI?

        When that cannot be told, assume it did: reconciliation puts a
        waiting job ComfyUI turns out not to know back in the line, while
        submitting it elsewhere now could run it twice.
        """
        try:
            queue = await backend.client.queue()
            if job.job_id in queue.present:
                return True
            return await backend.client.history(job.job_id) is not None
        except ComfyUIUnavailable:
            return True

    async def _take_back(self, backend: Backend, prompt_id: str) -> None:
        try:
            await backend.client.delete_pending([prompt_id])
            await backend.client.interrupt(prompt_id)
        except ComfyUIUnavailable:
            log.warning("could not withdraw prompt %s from %s", prompt_id, backend.url)

    def _probe_later(self, backend: Backend) -> None:
        """A backend that failed a submission gets no jobs until it answers again."""
        if backend.url in self._probing or self.tasks.closed:
            return
        self._probing.add(backend.url)
        self.tasks.spawn(self._probe(backend), f"probe {backend.url}")

    async def _probe(self, backend: Backend) -> None:
        try:
            for attempt in itertools.count():
                delay = PROBE_BACKOFF_SECONDS[min(attempt, len(PROBE_BACKOFF_SECONDS) - 1)]
                await asyncio.sleep(delay)
                if self.pool.get(backend.url) is not backend:
                    return
                if not backend.healthy:
                    continue  # the socket reports it up when it reconnects
                try:
                    await backend.client.queue_remaining()
                except ComfyUIUnavailable:
                    continue
                if self.drives(backend.url):
                    self.tell(self.core.backend_up, backend.url)
                return
        finally:
            self._probing.discard(backend.url)

    # -- taking prompts back ------------------------------------------------------

    async def _withdraw(self, job_id: str, backend: Backend | None, attempt: int) -> None:
        """Delete a waiting prompt, then learn from ComfyUI where it really is."""
        if backend is None:
            self.tell(self.core.withdrawn, job_id, attempt)
            return
        try:
            await backend.client.delete_pending([job_id])
            queue = await backend.client.queue()
            if job_id in queue.running:
                self.tell(self.core.started, job_id)
                job = self.registry.get(job_id)
                if job is not None:
                    job.started()
                return
            if job_id in queue.pending:
                self.tell(self.core.withdraw_failed, job_id, attempt)
                return
            entry = await backend.client.history(job_id)
        except ComfyUIUnavailable as exc:
            ticket = self.core.tickets.get(job_id)
            if ticket is not None and ticket.cancel_requested and not backend.healthy:
                # Cancel of a prompt on an unreachable backend answers at once;
                # that ComfyUI drops it when it is back.
                self.tell(self.core.withdrawn, job_id, attempt, owed=True)
                return
            log.info("could not take prompt %s back from %s: %s", job_id, backend.url, exc)
            self.tell(self.core.withdraw_failed, job_id, attempt)
            return
        if entry is None:
            self.tell(self.core.withdrawn, job_id, attempt)
            return
        # It ran (and ended) before the delete arrived: collect it as usual.
        self.tell(self.core.started, job_id)
        job = self.registry.get(job_id)
        if job is not None and self.tracker is not None:
            await self.tracker.apply_history(job, backend, entry)

    async def _interrupt(self, job: Job, backend: Backend) -> None:
        """Interrupt the job's running prompt, re-sending until ComfyUI confirms."""
        while not job.terminal and job.state is JobState.RUNNING:
            self.last_interrupt[backend.url] = time.monotonic()
            try:
                await backend.client.interrupt(job.job_id)
            except ComfyUIUnavailable as exc:
                log.info("interrupt of %s failed: %s", job.job_id, exc)
            if await within(job.wait_terminal(), CANCEL_RESEND_SECONDS):
                return
            if self.tracker is not None:
                with contextlib.suppress(ComfyUIUnavailable):
                    await self.tracker.reconcile(backend)

    async def _delete_owed(self, backend: Backend, job_ids: tuple[str, ...]) -> None:
        """Drop prompts a returning backend may hold for jobs moved off it."""
        try:
            await backend.client.delete_pending(list(job_ids))
            for prompt_id in job_ids:
                await backend.client.interrupt(prompt_id)
        except ComfyUIUnavailable as exc:
            log.warning("could not drop %d prompts from %s: %s", len(job_ids), backend.url, exc)
            return
        self.tell(self.core.deletes_done, backend.url, job_ids)

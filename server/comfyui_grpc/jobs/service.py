"""The job service: submission, idempotency, cancel, lookups.

It owns the registry and hands each job to a backend. What ComfyUI reports
afterwards reaches the jobs through :class:`~.tracker.JobTracker`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..backends import Backend, BackendPool
from ..comfyui.errors import ComfyUIUnavailable, ComfyUIValidationError
from ..errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from ..observability.metrics import Metrics
from ..state import JobStore, NullJobStore
from ..storage import ArtifactStore, ObjectNotFound, StorageError
from ..tasks import TaskSet, within
from .collector import ArtifactCollector
from .job import Job, JobSpec
from .manifest import load_job
from .model import JobState
from .registry import JobRegistry
from .tracker import JobTracker
from .validation_errors import violations_from_comfyui

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobServiceSettings:
    max_queued_jobs: int = 1000
    """Generate answers RESOURCE_EXHAUSTED beyond this many waiting jobs."""
    reconcile_interval_seconds: float = 2.0
    """How often open jobs are checked against ComfyUI's queue and history."""
    cancel_confirm_seconds: float = 10.0
    """How long CancelJob waits for ComfyUI to confirm a running job stopped."""
    max_finished_jobs: int = 10_000
    """Finished jobs kept in memory; older ones are answered from manifests."""


def parse_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise InvalidArgument(
            f"job_id {job_id[:80]!r} is not a job id (a UUID as returned by Generate)",
        ) from None


class JobService:
    def __init__(
        self,
        *,
        pool: BackendPool,
        store: ArtifactStore,
        metrics: Metrics | None = None,
        settings: JobServiceSettings | None = None,
        job_store: JobStore | None = None,
    ) -> None:
        self.job_store = job_store or NullJobStore()
        self.settings = settings or JobServiceSettings()
        self.metrics = metrics or Metrics()
        self.pool = pool
        self.store = store
        self.registry = JobRegistry(self.settings.max_finished_jobs)
        self.tasks = TaskSet("job service")
        self.tracker = JobTracker(
            registry=self.registry,
            pool=pool,
            collector=ArtifactCollector(store, self.metrics),
            metrics=self.metrics,
            tasks=self.tasks,
            resubmit=self._resubmit,
            reconcile_interval_seconds=self.settings.reconcile_interval_seconds,
        )
        self._submit_errors: dict[str, GatewayError] = {}

    # -- wiring for backends ---------------------------------------------------

    def backend_callbacks(self) -> JobTracker:
        return self.tracker

    async def start(self) -> None:
        """Open the job store, take back unfinished jobs, start reconciling."""
        await self.job_store.open()
        for job in await self.job_store.unfinished():
            self._adopt(job)
        self.tracker.start()

    def _adopt(self, job: Job) -> None:
        """Follow a job from before a restart; reconciliation finds out where it is."""
        self.registry.add(job)
        self.job_store.track(job)
        backend = self.pool.get(job.backend)
        if backend is None:
            self.tracker.fail_lost(
                job, f"its backend {job.backend or '(none)'} is no longer configured"
            )
            return
        backend.outstanding.add(job.job_id)
        if job.state is JobState.QUEUED:
            backend.waiting.add(job.job_id)
        log.info(
            "resuming job after restart (%s)",
            job.state.value,
            extra=job.log_context,
        )

    async def close(self) -> None:
        await self.tracker.background.close()
        await self.tasks.close()
        await self.job_store.close()

    # -- submission --------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, job_id: str | None = None) -> tuple[Job, bool]:
        """Create and queue a job; with a known ``request_id`` return that job.

        Returns the job and whether it was an existing one.
        """
        if spec.request_id:
            existing = self.registry.by_request(spec.request_id)
            if existing is None:
                existing = await self.job_store.by_request(spec.request_id)
                if existing is not None and self.registry.get(existing.job_id) is None:
                    self.registry.add(existing)
                    if existing.terminal:
                        self.registry.finished(existing)
                existing = self.registry.by_request(spec.request_id) or existing
            if existing is not None:
                if existing.spec.fingerprint != spec.fingerprint:
                    raise FailedPrecondition(
                        f"request_id {spec.request_id!r} was already used for a different "
                        f"request (job {existing.job_id}); use a new request_id",
                        reason="REQUEST_ID_REUSED",
                    )
                await existing.submitted.wait()
                error = self._submit_errors.get(existing.job_id)
                if error is not None:
                    raise error
                return existing, True
        waiting = self.registry.count(JobState.QUEUED)
        if waiting >= self.settings.max_queued_jobs:
            raise ResourceExhausted(
                f"{waiting} jobs are already waiting (limit {self.settings.max_queued_jobs}); "
                "retry later",
                retry_after_seconds=min(30.0, 1.0 + waiting / 100),
                reason="QUEUE_FULL",
            )
        job = Job(job_id or str(uuid.uuid4()), spec)
        self.registry.add(job)
        self.job_store.track(job)
        try:
            await self._dispatch(job, exclude=frozenset())
        except BaseException as exc:
            # Nothing may stay behind from a job that never reached ComfyUI.
            self.registry.discard(job)
            for backend in self.pool:
                backend.outstanding.discard(job.job_id)
            await self.job_store.forget(job.job_id)
            if not isinstance(exc, GatewayError):
                raise
            if spec.request_id:
                # Concurrent duplicates waiting on this job see the same error.
                self._submit_errors[job.job_id] = exc
                asyncio.get_running_loop().call_later(60, self._submit_errors.pop, job.job_id, None)
            raise
        finally:
            job.submitted.set()
        return job, False

    async def _dispatch(self, job: Job, exclude: frozenset[str]) -> None:
        """Hand ``job`` to the least loaded healthy backend, trying others if one fails."""
        tried = set(exclude)
        while True:
            backend = self.pool.choose(frozenset(tried))
            tried.add(backend.url)
            job.backend = backend.url
            backend.outstanding.add(job.job_id)
            job.attempts += 1
            # Recorded, with its backend, before ComfyUI sees it: after a crash,
            # a recorded job that its backend does not know was never submitted
            # and is safe to submit.
            await self.job_store.save_now(job)
            try:
                result = await backend.client.submit(
                    dict(job.spec.workflow),
                    prompt_id=job.job_id,
                    client_id=backend.client_id,
                    front=job.spec.front,
                )
            except ComfyUIValidationError as exc:
                backend.outstanding.discard(job.job_id)
                if not exc.error:
                    # A 200 with node_errors: ComfyUI queued what validated; take it back.
                    await self._withdraw(backend, job.job_id)
                raise violations_from_comfyui(
                    exc, job.spec.source_field, job.spec.field_map
                ) from exc
            except ComfyUIUnavailable as exc:
                if exc.maybe_sent and await self._landed(backend, job):
                    # The answer was lost, not the prompt: ComfyUI has it.
                    backend.socket.expect_traffic()
                    self.tracker.submitted(job, backend)
                    return
                backend.outstanding.discard(job.job_id)
                log.warning("submit to %s failed: %s", backend.url, exc, extra=job.log_context)
                if len(self.pool.healthy) <= len(tried & {b.url for b in self.pool.healthy}):
                    raise Unavailable(
                        f"no ComfyUI backend accepted the job; retry shortly ({exc})",
                        reason="COMFYUI_UNAVAILABLE",
                    ) from exc
                continue
            job.queue_number = result.number
            log.info("submitted to ComfyUI", extra=job.log_context)
            backend.socket.expect_traffic()
            self.tracker.submitted(job, backend)
            return

    async def _landed(self, backend: Backend, job: Job) -> bool:
        """Did a submission whose answer was lost reach ComfyUI?

        When that cannot be told, assume it did: reconciliation resubmits a
        waiting job ComfyUI turns out not to know, while submitting it
        elsewhere now could run it twice.
        """
        try:
            queue = await backend.client.queue()
            if job.job_id in queue.present:
                job.queue_number = float(queue.position(job.job_id))
                return True
            return await backend.client.history(job.job_id) is not None
        except ComfyUIUnavailable:
            return True

    async def _withdraw(self, backend: Backend, prompt_id: str) -> None:
        try:
            await backend.client.delete_pending([prompt_id])
            await backend.client.interrupt(prompt_id)
        except ComfyUIUnavailable:
            log.warning("could not withdraw prompt %s from %s", prompt_id, backend.url)

    async def _resubmit(self, job: Job, lost_backend: str) -> None:
        """Submit a job again on another backend after its own was lost.

        ``submitted`` is clear meanwhile, as for a first submission: the job is
        in its new backend's books before ComfyUI has it, and a reconciliation
        in that window must not take it for lost and submit it a second time.
        """
        job.submitted.clear()
        try:
            await self._dispatch(job, exclude=frozenset({lost_backend}))
        except GatewayError as exc:
            self.tracker.fail_lost(
                job, f"its backend {lost_backend} was lost and resubmitting failed: {exc}"
            )
        finally:
            job.submitted.set()

    # -- lookups -------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.registry.get(parse_job_id(job_id))
        if job is None:
            raise NotFound(f"no job with id {job_id}", reason="JOB_NOT_FOUND")
        return job

    async def find(self, job_id: str) -> Job:
        """Like :meth:`get`, falling back to the job's stored manifest."""
        job_id = parse_job_id(job_id)
        job = self.registry.get(job_id)
        if job is not None:
            return job
        stored = await self.job_store.load(job_id)
        if stored is not None:
            return stored
        try:
            loaded = await load_job(self.store, job_id)
        except StorageError as exc:
            raise Unavailable(
                f"job {job_id} is not in memory and its manifest could not be read: {exc}",
                reason="STORE_UNAVAILABLE",
            ) from exc
        if loaded is None:
            raise NotFound(f"no job with id {job_id}", reason="JOB_NOT_FOUND")
        return loaded

    async def read_artifact(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.store.read_chunks(key, chunk_size):
                yield chunk
        except ObjectNotFound:
            raise NotFound(
                f"artifact {key} is no longer in the store", reason="ARTIFACT_NOT_FOUND"
            ) from None
        except StorageError as exc:
            raise Unavailable(
                f"the artifact store failed: {exc}", reason="STORE_UNAVAILABLE"
            ) from exc

    async def wait(self, job: Job, timeout: float) -> Job:
        if not job.terminal and timeout > 0:
            await within(job.wait_terminal(), timeout)
        return job

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Cancel a job without ever touching another one.

        Queued: deleted from ComfyUI's queue. Running: interrupted by prompt id
        (ComfyUI ignores that unless our prompt is the one running), then
        confirmed. Terminal: returned unchanged.
        """
        job = self.get(job_id)
        if job.terminal:
            return job
        job.cancel_requested = True
        await job.submitted.wait()
        budget = self.settings.cancel_confirm_seconds if timeout is None else timeout
        await self.tracker.cancel(job, budget)
        return job

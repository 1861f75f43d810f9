"""The job service: submission, idempotency, cancel, lookups.

It owns the registry; a new job is checked against what the fleet can run,
recorded, and put in the scheduler's line (:mod:`comfyui_grpc.scheduler`),
which hands it to a backend when one has room. What ComfyUI reports
afterwards reaches the jobs through :class:`~.tracker.JobTracker`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..backends import BackendPool
from ..backends.inventory import Needs, needs_of
from ..comfyui.validation import validate_against
from ..errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from ..observability.metrics import Metrics
from ..scheduler.core import DEFAULT_PREFETCH, Scheduler
from ..scheduler.executor import Fleet
from ..state import JobStore, NullJobStore, RequestIdTaken
from ..storage import ArtifactStore, ObjectNotFound, StorageError
from ..tasks import TaskSet, within
from .collector import ArtifactCollector
from .job import Job, JobSpec
from .manifest import load_job
from .model import JobState
from .registry import JobRegistry
from .tracker import JobTracker
from .validation_errors import violations_from_comfyui

if TYPE_CHECKING:
    from ..cluster.mirrors import Mirrors
    from ..cluster.previews import PreviewRelay
    from ..cluster.shared_state import SharedState
    from ..scheduler.executor import SharedFleet

    class Replica(SharedFleet, Protocol):
        """What the service needs of :class:`~comfyui_grpc.cluster.replica.Replica`."""

        shared: SharedState
        mirrors: Mirrors
        previews: PreviewRelay

        async def start(self) -> None: ...

        async def stop(self, settle_seconds: float = 0.0) -> None: ...

        async def close(self) -> None: ...


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
    max_queued_jobs_per_caller: int = 0
    """Generate answers RESOURCE_EXHAUSTED beyond this many waiting jobs of one caller
    (0: no per-caller limit)."""
    backend_prefetch: int = DEFAULT_PREFETCH
    """Prompts handed to a backend beyond its running one, so its GPU never idles."""


def _reused(request_id: str, job_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"request_id {request_id!r} was already used for a different request "
        f"(job {job_id}); use a new request_id",
        reason="REQUEST_ID_REUSED",
    )


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
        self.core = Scheduler(prefetch=self.settings.backend_prefetch)
        self.fleet = Fleet(
            core=self.core,
            pool=pool,
            registry=self.registry,
            job_store=self.job_store,
            tasks=self.tasks,
        )
        self.tracker = JobTracker(
            registry=self.registry,
            pool=pool,
            fleet=self.fleet,
            collector=ArtifactCollector(store, self.metrics),
            metrics=self.metrics,
            tasks=self.tasks,
            reconcile_interval_seconds=self.settings.reconcile_interval_seconds,
        )
        self.fleet.tracker = self.tracker
        self.registry.on_forget = self.core.forget
        self.replica: Replica | None = None
        """Set when several gateway replicas share the job store."""

    def share_with_replicas(self, replica: Replica) -> None:
        self.replica = replica
        self.fleet.shared = replica

    # -- wiring for backends ---------------------------------------------------

    def backend_callbacks(self) -> JobTracker:
        return self.tracker

    def add_backend(self, url: str) -> None:
        self.core.add_backend(url)

    async def start(self) -> None:
        """Open the job store, take back unfinished jobs, start reconciling."""
        await self.job_store.open()
        if self.replica is not None:
            # Jobs come from the shared line and with the backends this replica takes.
            self.tracker.start()
            await self.replica.start()
            return
        # In the order they were submitted: the line is rebuilt as it was.
        for job in sorted(await self.job_store.unfinished(), key=lambda j: j.create_time):
            self._adopt(job)
        self.fleet.run_actions()
        self.tracker.start()

    def _adopt(self, job: Job) -> None:
        """Follow a job from before a restart; reconciliation finds out where it is."""
        self.hold(job)
        log.info("resuming job after restart (%s)", job.state.value, extra=job.log_context)

    def hold(self, job: Job) -> None:
        """Take charge of a recorded job: after a restart, claimed from the
        shared line, or with a backend taken over from another replica."""
        self.registry.add(job)
        self.job_store.track(job)
        needs = needs_of(job.spec.workflow)
        if job.cancel_requested and (job.state is JobState.QUEUED and not job.backend):
            self.tracker.finish_cancelled(job)
            return
        if not job.backend:
            # It was waiting in the gateway's line: it joins it again.
            self.core.submit(
                job.job_id,
                caller=job.spec.caller,
                needs=needs,
                high=job.spec.front,
                retry_on_loss=job.spec.retry_on_backend_loss,
            )
        elif self.pool.get(job.backend) is None:
            self.tracker.fail_lost(job, f"its backend {job.backend} is no longer configured")
            return
        else:
            self.core.adopt(
                job.job_id,
                caller=job.spec.caller,
                needs=needs,
                backend=job.backend,
                running=job.state is not JobState.QUEUED,
                retry_on_loss=job.spec.retry_on_backend_loss,
            )
            if job.cancel_requested:
                self.core.cancel(job.job_id)

    def let_go(self, job_ids: Iterable[str]) -> list[Job]:
        """Another replica takes charge of these jobs: stop following and
        writing them (the caller has the scheduler core drop them)."""
        jobs = []
        for job_id in job_ids:
            job = self.registry.get(job_id)
            if job is None:
                continue
            self.registry.discard(job)
            self.job_store.untrack(job)
            jobs.append(job)
        return jobs

    def cancel_held(self, job_id: str) -> None:
        """Cancel asked on another replica for a job this one holds."""
        job = self.registry.get(job_id)
        if job is not None and not job.terminal:
            job.cancel_requested = True
            self.fleet.tell(self.core.cancel, job_id)

    async def close(self) -> None:
        await self.tracker.background.close()
        await self.tasks.close()
        if self.replica is not None:
            await self.replica.close()
        await self.job_store.close()

    # -- submission --------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, job_id: str | None = None) -> tuple[Job, bool]:
        """Create a job and put it in the gateway's line; with a known
        ``request_id`` return that job.

        Returns the job and whether it was an existing one.
        """
        if spec.request_id and self.replica is not None:
            found = await self._by_request_shared(spec.request_id)
            if found is not None:
                if found.spec.fingerprint != spec.fingerprint:
                    raise _reused(spec.request_id, found.job_id)
                return found, True
        elif spec.request_id:
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
                    raise _reused(spec.request_id, existing.job_id)
                await existing.recorded.wait()
                if self.registry.get(existing.job_id) is existing or existing.terminal:
                    return existing, True
                # The first request could not be recorded and left no job: this
                # one is a new try under the same request_id.
                return await self.submit(spec, job_id=job_id)
        needs = needs_of(spec.workflow)
        if self.replica is not None:
            return await self._submit_shared(spec, needs, job_id), False
        self._check_room(spec.caller, self.registry.count(JobState.QUEUED),
                         self.core.line.waiting_for(spec.caller))  # fmt: skip
        self._check_runnable(spec, needs)
        job = Job(job_id or str(uuid.uuid4()), spec)
        self.registry.add(job)
        self.job_store.track(job)
        try:
            # Kept in the store before Generate answers: it survives a restart.
            await self.job_store.save_now(job)
        except BaseException:
            self.registry.discard(job)
            raise
        finally:
            job.recorded.set()
        self.fleet.tell(
            self.core.submit,
            job.job_id,
            caller=spec.caller,
            needs=needs,
            high=spec.front,
            retry_on_loss=spec.retry_on_backend_loss,
        )
        if job.state is JobState.QUEUED and not job.log.last_sequence:
            job.queued(self.core.place(job.job_id), "")
        return job, False

    async def _submit_shared(self, spec: JobSpec, needs: Needs, job_id: str | None) -> Job:
        """Record a job in the line the replicas share; this one follows it
        (as a mirror) until some replica with room claims it."""
        assert self.replica is not None
        shared = self.replica.shared
        self._check_runnable(spec, needs)
        job = Job(job_id or str(uuid.uuid4()), spec)
        try:
            await shared.enqueue(
                job, needs, lambda waiting, mine: self._check_room(spec.caller, waiting, mine)
            )
        except RequestIdTaken:
            # Another replica recorded this request_id a moment ago: that job is the answer.
            found = await self._by_request_shared(spec.request_id)
            if found is None:
                raise
            if found.spec.fingerprint != spec.fingerprint:
                raise _reused(spec.request_id, found.job_id) from None
            return found
        job.recorded.set()
        return self.replica.mirrors.add(job, fresh=True)

    async def _by_request_shared(self, request_id: str) -> Job | None:
        assert self.replica is not None
        found = self.registry.by_request(request_id) or self.replica.mirrors.by_request(request_id)
        if found is not None:
            return found
        stored = await self.job_store.by_request(request_id)
        if stored is None:
            return None
        return self.registry.get(stored.job_id) or await self.replica.mirrors.load(stored.job_id)

    def _check_room(self, caller: str, waiting: int, mine: int) -> None:
        if waiting >= self.settings.max_queued_jobs:
            raise ResourceExhausted(
                f"{waiting} jobs are already waiting (limit {self.settings.max_queued_jobs}); "
                "retry later",
                retry_after_seconds=min(30.0, 1.0 + waiting / 100),
                reason="QUEUE_FULL",
            )
        limit = self.settings.max_queued_jobs_per_caller
        if limit and mine >= limit:
            raise ResourceExhausted(
                f"caller {caller!r} already has {mine} jobs waiting (limit {limit} per "
                "caller); retry once some have started",
                retry_after_seconds=min(30.0, 1.0 + mine / 100),
                reason="CALLER_QUEUE_FULL",
            )

    def _check_runnable(self, spec: JobSpec, needs: Needs) -> None:
        """Refuse at once a graph that no known backend could run."""
        if not self.pool.healthy:
            raise self.pool.unavailable()
        # Every replica reads every backend's inventory, whichever drives it.
        known = [b.inventory for b in self.pool if b.inventory is not None]
        if not known:
            return  # up, inventory not read yet: ComfyUI validates at dispatch
        capable = [inventory for inventory in known if inventory.satisfies(needs)]
        reference = capable[0] if capable else known[0]
        problems = validate_against(reference.object_info, spec.workflow)
        if problems is not None:
            raise violations_from_comfyui(problems, spec.source_field, spec.field_map)
        if not capable:
            raise InvalidArgument(
                "no ComfyUI backend can run this workflow",
                [FieldViolation(spec.source_field, "no backend has every node and model it names")],
            )

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
        if self.replica is not None:
            mirror = self.replica.mirrors.get(job_id) or await self.replica.mirrors.load(job_id)
            if mirror is not None:
                return mirror
        else:
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

    async def listed(self, states: Iterable[JobState]) -> list[Job]:
        """The jobs ListJobs shows: with replicas, every replica's (from the store)."""
        if self.replica is None:
            return self.registry.in_states(states)
        return await self.replica.shared.listed(
            [s.value for s in states], self.settings.max_finished_jobs
        )

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

    @asynccontextmanager
    async def previews_of(self, job: Job) -> AsyncIterator[None]:
        """While open, ``job``'s previews reach its :attr:`Job.preview` here,
        also when another replica holds it (they come through the database)."""
        if self.replica is None or job.terminal or self.registry.get(job.job_id) is job:
            yield  # this replica's own socket delivers them
            return
        async with self.replica.previews.watching(job.job_id):
            yield

    async def wait(self, job: Job, timeout: float) -> Job:
        if not job.terminal and timeout > 0:
            await within(job.wait_terminal(), timeout)
        return job

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Cancel a job without ever touching another one.

        Waiting in the gateway: cancelled at once, ComfyUI never hears of it.
        Waiting in ComfyUI's queue: deleted there. Running: interrupted by
        prompt id (ComfyUI ignores that unless our prompt is the one running),
        then confirmed. Terminal: returned unchanged.
        """
        budget = self.settings.cancel_confirm_seconds if timeout is None else timeout
        if self.replica is not None and self.registry.get(parse_job_id(job_id)) is None:
            return await self._cancel_shared(await self.find(job_id), budget)
        job = self.get(job_id)
        if job.terminal:
            return job
        job.cancel_requested = True
        self.fleet.tell(self.core.cancel, job.job_id)
        if not job.terminal and budget > 0:
            await within(job.wait_terminal(), budget)
        return job

    async def _cancel_shared(self, job: Job, budget: float) -> Job:
        """Cancel a job this replica does not hold: taken out of the shared
        line and cancelled here, or the replica holding it is told."""
        assert self.replica is not None
        if job.terminal:
            return job
        shared = self.replica.shared
        taken = await shared.take_to_cancel(job.job_id)
        if taken is not None:
            taken.cancel_requested = True
            self.hold(taken)  # a job asked to cancel, not on a backend: cancelled at once
            self.fleet.run_actions()
            await self.job_store.save_now(taken)
            return taken
        job.cancel_requested = True
        await shared.ask_cancel(job.job_id)
        if not job.terminal and budget > 0:
            await within(job.wait_terminal(), budget)
        return job

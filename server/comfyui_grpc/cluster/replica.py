"""One gateway replica among several sharing a PostgreSQL job store.

Every replica answers every RPC; what differs is which ComfyUI backends it
drives. ComfyUI sends a prompt's progress only to the socket that submitted
it, so each backend has one owner at a time, by lease
(:mod:`.shared_state`). The owner submits to it, follows it and writes its
jobs; a replica that takes a backend over (its owner stopped renewing) holds
its open jobs and reconciles them with ComfyUI, exactly as after a restart.

Backends are spread evenly: a replica takes lapsed leases while it owns fewer
than its share (backends / live replicas, rounded up) and hands one over when
it owns more, once nothing of ours runs there. On stop it hands over every
backend at once (a rolling update moves no job twice and waits for no lease).

Jobs wait in the shared line; a replica whose backends have room claims the
next ones (fair share across callers, fleet-wide). Its own scheduler core
decides the rest as with one gateway; whatever would wait in the core's line
goes back to the shared one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..backends import BackendPool
from ..backends.inventory import Needs
from ..jobs.job import Job
from ..scheduler.shared_line import choose
from ..state.errors import JobStoreUnavailable
from ..state.postgres import EVENTS_CHANNEL, PostgresJobStore
from ..tasks import TaskSet, within
from .mirrors import Mirrors
from .notifications import Notifications
from .previews import PREVIEWS_CHANNEL, WATCH_CHANNEL, PreviewRelay
from .shared_state import CANCEL_CHANNEL, LEASES_CHANNEL, QUEUE_CHANNEL, SharedState

if TYPE_CHECKING:
    from ..jobs.service import JobService

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 10.0
VALID_FRACTION = 0.8
"""A lease is used for this fraction of its term after renewal began: the
rest is margin, so this replica stops before another may take over."""
PULL_POLL_SECONDS = 1.0


class Replica:
    def __init__(
        self,
        *,
        service: JobService,
        store: PostgresJobStore,
        pool: BackendPool,
        replica_id: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.service = service
        self.store = store
        self.pool = pool
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self.shared = SharedState(store, replica_id, lease_seconds)
        self.mirrors = Mirrors(self.shared)
        self.owned: set[str] = set()
        self.draining: set[str] = set()
        self._valid_until = 0.0
        self._pull = asyncio.Event()
        self._tasks = TaskSet("replica")
        self._followers = TaskSet("replica notifications")
        self._stopped = False
        self._returning: set[str] = set()
        self._owed_recorded: dict[str, set[str]] = {}
        """Jobs let go to the shared line and not yet recorded there."""
        self.waiting_by_caller: dict[str, int] = {}
        """The shared line's jobs by caller, as of the last lease renewal (for metrics)."""
        self._lease_wake = asyncio.Event()
        self.previews = PreviewRelay(
            store,
            replica_id,
            held=service.registry.get,
            followed=self.mirrors.all_of,
            lease_seconds=lease_seconds,
        )
        self.notifications = Notifications(
            lambda: store.url,
            {
                QUEUE_CHANNEL: lambda _: self._pull.set(),
                EVENTS_CHANNEL: self.mirrors.notified,
                CANCEL_CHANNEL: self._cancel_asked,
                LEASES_CHANNEL: lambda _: self._lease_wake.set(),
                PREVIEWS_CHANNEL: self.previews.published,
                WATCH_CHANNEL: self.previews.watch_asked,
            },
            on_connect=self._reconnected,
            scrub=store.scrub,
        )

    # -- what the rest of the gateway asks ------------------------------------------

    def drives(self, url: str) -> bool:
        """May this replica hand work to ``url`` now (owned, lease in term)?"""
        return (
            url in self.owned and url not in self.draining and time.monotonic() < self._valid_until
        )

    def wake_puller(self) -> None:
        self._pull.set()

    def give_back(self, job_ids: Sequence[str]) -> None:
        """Jobs the core's line held (no room here): back to the shared line."""
        jobs = self.service.let_go(job_ids)
        for job in jobs:
            self.mirrors.add(job)
        ids = [j.job_id for j in jobs]
        self._returning.update(ids)
        if not self._stopped:  # else stop() gives them back with the rest
            self._tasks.spawn(self._give_back(ids), "give jobs back")

    async def _give_back(self, job_ids: list[str]) -> None:
        for attempt in itertools.count(1):  # until it works, or stop() gives them back
            try:
                await self.store.flush()
                await self.shared.give_back(job_ids)
                self._returning.difference_update(job_ids)
                return
            except JobStoreUnavailable as exc:
                # Held by a replica that is alive: only this one can give them back
                # (or, once it is gone, the replica that finds them orphaned).
                log.warning("could not put %d jobs back in the shared line: %s",
                            len(job_ids), exc.message)  # fmt: skip
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        await self.shared.start()
        await self._tick()
        self._tasks.spawn_supervised(self._lease_forever, "backend leases")
        self._tasks.spawn_supervised(self._pull_forever, "shared line")
        # Followers run until close: streams here go on after the backends are handed over.
        self._followers.spawn_supervised(self.notifications.run, "replica notifications")
        self._followers.spawn_supervised(self.mirrors.run, "jobs held elsewhere")
        self.previews.start()
        log.info(
            "replica %s of a shared job store: drives %s",
            self.replica_id,
            ", ".join(sorted(self.owned)) or "no backend yet",
        )

    async def stop(self, settle_seconds: float = 0.0) -> None:
        """Hand every backend and waiting job over to the other replicas now.

        Nothing new is handed to ComfyUI from the start; what is under way
        (submissions, outputs being stored) gets up to ``settle_seconds`` to
        finish first. Streams served here go on following their jobs from the
        store. Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        self._valid_until = 0.0  # drives() is false from now on: no new submission
        await self._tasks.close()
        if settle_seconds > 0:
            await self.service.tasks.wait(settle_seconds)
        core = self.service.core
        self.give_back(core.give_back())
        waiting = sorted(self._returning)
        urls = sorted(self.owned)
        held: list[str] = []
        try:
            await self._record_owed()
        except JobStoreUnavailable as exc:
            log.warning("could not record the deletes owed to backends: %s", exc.message)
        for url in urls:
            held += self._disown_jobs(url)
        for job in self.service.let_go(held):
            self.mirrors.add(job)  # streams served here follow them from the store
        self.owned.clear()
        try:
            await self.store.flush()
            await self.shared.give_back(waiting)
            await self.shared.release(urls)
            await self.shared.leave()
        except JobStoreUnavailable as exc:
            log.warning("could not hand backends over at stop (taken over once their "
                        "leases lapse): %s", exc.message)  # fmt: skip
            return
        if urls:
            log.info("handed over %s and %d jobs", ", ".join(urls), len(held) + len(waiting))

    async def close(self) -> None:
        """Stop following jobs held elsewhere (after :meth:`stop`)."""
        await self.stop()
        await self.previews.close()
        await self._followers.close()

    # -- leases --------------------------------------------------------------------

    async def _lease_forever(self) -> None:
        while True:
            # Early when a replica hands backends over or leaves.
            await within(self._lease_wake.wait(), self.lease_seconds / 3)
            self._lease_wake.clear()
            try:
                await self._tick()
            except JobStoreUnavailable as exc:
                log.warning("could not renew backend leases: %s", exc.message)

    async def _tick(self) -> None:
        began = time.monotonic()
        urls = [b.url for b in self.pool]
        gone = sorted(self.owned - set(urls))  # left DNS: its jobs were moved already
        for url in gone:
            self._disown(url)
        await self.shared.release(gone)
        view = await self.shared.renew(sorted(self.owned))
        for url in sorted(self.owned - view.held):
            log.warning(
                "another replica took ComfyUI at %s over (this one missed renewing its lease)",
                url,
            )
            self._disown(url)
        self._valid_until = began + self.lease_seconds * VALID_FRACTION
        self.waiting_by_caller = await self.shared.waiting_by_caller()
        share = math.ceil(len(urls) / view.live_replicas) if urls else 0
        mine = len(self.owned - self.draining)
        if mine < share:
            for url in sorted(set(urls) - self.owned, key=self._preference):
                jobs = await self.shared.acquire(url)
                if jobs is not None:
                    self._take_over(url, jobs, await self.shared.owed(url))
                    mine += 1
                    if mine >= share:
                        break
        elif mine > share and not self.draining:
            core = self.service.core
            url = min(self.owned, key=lambda u: (len(self._jobs_on(u)), u))
            log.info("handing ComfyUI at %s over to another replica once idle", url)
            self.draining.add(url)
            core.backend_down(url)
        for url in sorted(self.draining):
            if not self._jobs_on(url):
                await self._hand_over(url)
        await self._record_owed()
        await self.previews.refresh()

    async def _record_owed(self) -> None:
        """Deletes owed to a backend survive this replica (another may drive it next)."""
        for url in sorted(self.owned):
            owed = self.service.core.owed_by(url)
            if owed != self._owed_recorded.get(url, set()):
                await self.shared.owe(url, owed)
                self._owed_recorded[url] = owed

    def _preference(self, url: str) -> bytes:
        """Rendezvous order: replicas try different backends first."""
        return hashlib.sha256(f"{self.replica_id}\n{url}".encode()).digest()

    def _take_over(self, url: str, jobs: list[Job], owed: set[str]) -> None:
        self.owned.add(url)
        self._owed_recorded[url] = owed
        core = self.service.core
        core.add_backend(url)
        core.owe(url, owed)
        for job in jobs:
            self.service.hold(job)
        self.service.fleet.run_actions()
        self.previews.held_now([j.job_id for j in jobs])
        log.info("drives ComfyUI at %s now (%d open jobs to reconcile)", url, len(jobs))
        backend = self.pool.get(url)
        if backend is not None and backend.healthy and backend.inventory is not None:
            # Up and known already (every replica reads every backend's inventory).
            self.service.fleet.tell(core.backend_up, url, backend.inventory)
            if jobs:
                tracker = self.service.tracker
                self._tasks.spawn(tracker.reconcile_quietly(backend), f"take over {url}")
        # Otherwise its socket's next connection reports it up.
        self._pull.set()

    def _disown(self, url: str) -> None:
        ids = self._disown_jobs(url)
        self.owned.discard(url)
        self.draining.discard(url)
        for job in self.service.let_go(ids):
            self.mirrors.add(job)

    def _jobs_on(self, url: str) -> list[str]:
        """Our jobs on ``url``: in ComfyUI, or done there with outputs being stored."""
        there = self.service.core.jobs_on(url)
        storing = [
            j.job_id
            for j in self.service.registry.open_jobs()
            if j.backend == url and j.job_id not in there
        ]
        return [*there, *storing]

    def _disown_jobs(self, url: str) -> list[str]:
        """Drop ``url`` from the core; every job of ours on it (to let go)."""
        storing = [j.job_id for j in self.service.registry.open_jobs() if j.backend == url]
        return sorted({*self.service.core.disown(url), *storing})

    async def _hand_over(self, url: str) -> None:
        await self._record_owed()
        self._disown(url)
        await self.store.flush()
        await self.shared.release([url])
        log.info("handed ComfyUI at %s over", url)

    # -- the shared line -------------------------------------------------------------

    async def _pull_forever(self) -> None:
        while True:
            await within(self._pull.wait(), PULL_POLL_SECONDS)
            self._pull.clear()
            try:
                while await self._pull_once():
                    pass
            except JobStoreUnavailable as exc:
                log.warning("could not take jobs from the shared line: %s", exc.message)

    async def _pull_once(self) -> bool:
        room = self.service.core.room() if time.monotonic() < self._valid_until else []
        if not room:
            return False

        def runnable(needs: Needs) -> bool:
            return any(inventory.satisfies(needs) for inventory in room)

        _, jobs = await self.shared.claim(lambda rows: choose(rows, runnable, len(room)))
        for job in jobs:
            self.service.hold(job)
        self.service.fleet.run_actions()
        self.previews.held_now([j.job_id for j in jobs])
        return bool(jobs)

    # -- notifications ---------------------------------------------------------------

    def _cancel_asked(self, job_id: str) -> None:
        self.service.cancel_held(job_id)

    def _reconnected(self) -> None:
        self.mirrors.all_changed()
        self._pull.set()
        held = [j.job_id for j in self.service.registry.open_jobs()]
        if held and not self._followers.closed:
            self._followers.spawn(self._missed_cancels(held), "cancels asked meanwhile")

    async def _missed_cancels(self, job_ids: list[str]) -> None:
        for job_id in await self.shared.cancel_requested(job_ids):
            self.service.cancel_held(job_id)

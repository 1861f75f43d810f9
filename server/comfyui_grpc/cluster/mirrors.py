"""Jobs another gateway replica holds, followed from the shared store.

A mirror is an ordinary :class:`~comfyui_grpc.jobs.job.Job` that this
replica never changes itself: it catches up from the store whenever the
holder says it wrote the job's events (``NOTIFY``), and every second in
case a notification was missed. Streams, ``GetResult`` waits and cancels
served here therefore see every event the holder recorded, in order, and
``after_sequence`` means the same on every replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..jobs.job import Job
from ..jobs.records import event_from_json, job_from_json
from ..state.errors import JobStoreUnavailable
from ..tasks import within
from .shared_state import SharedState

log = logging.getLogger(__name__)

IDLE_DROP_SECONDS = 3600.0
"""An open mirror nobody has asked for or streamed in this long is dropped
(longer than any GetResult wait)."""


class Mirrors:
    def __init__(self, shared: SharedState, *, refresh_seconds: float = 1.0) -> None:
        self.shared = shared
        self.refresh_seconds = refresh_seconds
        self._jobs: dict[str, list[Job]] = {}
        """Followed jobs by id: the first is the one this replica answers with;
        others are objects of the same job it held and let go, which streams
        and waits opened meanwhile still watch."""
        self._used: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> Job | None:
        found = self._jobs.get(job_id)
        if not found:
            return None
        self._used[job_id] = time.monotonic()
        return found[0]

    def all_of(self, job_id: str) -> list[Job]:
        """Every object of the job followed here (usually one)."""
        return list(self._jobs.get(job_id, ()))

    def by_request(self, request_id: str) -> Job | None:
        return next(
            (jobs[0] for jobs in self._jobs.values() if jobs[0].spec.request_id == request_id),
            None,
        )

    def add(self, job: Job, *, fresh: bool = False) -> Job:
        """Follow ``job`` from now on; ``fresh``: just read or written, no
        news can be missing (else it is checked for news at once). Returns
        the object this replica answers with for the job."""
        followed = self._jobs.setdefault(job.job_id, [])
        if not any(j is job for j in followed):
            followed.append(job)
            if not job.terminal and not fresh:
                self.changed(job.job_id)
        self._used[job.job_id] = time.monotonic()
        return followed[0]

    async def load(self, job_id: str) -> Job | None:
        """The job as the store has it, followed from now on (None: unknown)."""
        found = await self.shared.news(job_id, 0)
        if found is None:
            return None
        record, events = found
        return self.add(job_from_json(job_id, record, events, sequence_gap=False), fresh=True)

    def notified(self, payload: str) -> None:
        """The holder wrote news of a job (:func:`~comfyui_grpc.state.postgres.event_news`).

        Step progress that follows on from what the mirror has is applied from
        the payload at once; anything else (a transition, an artifact, a gap)
        is read from the store with the job's record, in order.
        """
        try:
            news = json.loads(payload)
            job_id = str(news["job"])
            jobs = [j for j in self._jobs.get(job_id, ()) if not j.terminal]
            if not jobs:
                return
            texts = news.get("events") or []
            events = [event_from_json(job_id, text) for text in texts]
        except (AttributeError, ValueError, KeyError, TypeError):
            log.warning("ignored a malformed job notification")
            return
        follows_on = bool(events) and all(
            events[0].sequence == j.log.last_sequence + 1 for j in jobs
        )
        if follows_on and job_id not in self._dirty and all(e.node_level for e in events):
            for job in jobs:
                job.follow(None, events)
        else:
            self.changed(job_id)

    def changed(self, job_id: str) -> None:
        """The job has news to read from the store."""
        if job_id in self._jobs:
            self._dirty.add(job_id)
            self._wake.set()

    def all_changed(self) -> None:
        """Notifications may have been missed (the listener reconnected)."""
        self._dirty.update(self._jobs)
        self._wake.set()

    async def run(self) -> None:
        while True:
            woken = await within(self._wake.wait(), self.refresh_seconds)
            self._wake.clear()
            if not woken:
                self._dirty.update(self._open())
            dirty, self._dirty = self._dirty, set()
            try:
                await self.catch_up(dirty)
            except JobStoreUnavailable as exc:
                log.warning("could not follow jobs held by other replicas: %s", exc.message)
                self._dirty |= dirty
            self._drop_unused()

    async def catch_up(self, job_ids: set[str]) -> None:
        open_jobs = self._open()
        jobs = {j: open_jobs[j] for j in job_ids if j in open_jobs}
        if not jobs:
            return
        after = {j: min(o.log.last_sequence for o in objects) for j, objects in jobs.items()}
        news = await self.shared.news_many(after)
        for job_id, (record, events) in news.items():
            for job in jobs[job_id]:
                job.follow(record, events)

    def _open(self) -> dict[str, list[Job]]:
        """Every object of a job that may still change, by job id."""
        found = {j: [o for o in objects if not o.terminal] for j, objects in self._jobs.items()}
        return {j: objects for j, objects in found.items() if objects}

    def _drop_unused(self) -> None:
        now = time.monotonic()
        for job_id, objects in list(self._jobs.items()):
            if any(o.log.subscriber_count for o in objects):
                self._used[job_id] = now
            elif now - self._used.get(job_id, now) > IDLE_DROP_SECONDS:
                objects.clear()
            objects[:] = [o for o in objects if not o.terminal]
            if not objects:
                del self._jobs[job_id]
                self._used.pop(job_id, None)

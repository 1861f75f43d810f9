"""Where jobs live while the gateway runs: by id, by request id, in order.

Finished jobs are kept for lookups and listings up to a bound, oldest
evicted first; after that a job is answered from its stored manifest.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator

from .job import Job
from .model import JobState

DEFAULT_MAX_FINISHED = 10_000


class JobRegistry:
    def __init__(self, max_finished: int = DEFAULT_MAX_FINISHED) -> None:
        self._jobs: dict[str, Job] = {}
        # Jobs not yet finished, and how many are in each state: every Generate
        # counts the waiting jobs, which must not walk thousands of jobs.
        self._open: dict[str, Job] = {}
        self._open_states: Counter[JobState] = Counter()
        self._by_request: dict[str, str] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_finished = max_finished
        # Told when a finished job leaves memory (the scheduler drops its ticket).
        self.on_forget: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def add(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        if not job.terminal and job.job_id not in self._open:
            self._open[job.job_id] = job
            self._open_states[job.state] += 1
            job.state_observer = self._state_changed
        if job.spec.request_id:
            self._by_request[job.spec.request_id] = job.job_id

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_request(self, request_id: str) -> Job | None:
        job_id = self._by_request.get(request_id)
        return self._jobs.get(job_id) if job_id else None

    def _state_changed(self, job: Job, old: JobState, new: JobState) -> None:
        if job.job_id not in self._open:
            return
        if not old.terminal:
            self._open_states[old] -= 1
        if not new.terminal:
            self._open_states[new] += 1

    def _close(self, job: Job) -> None:
        if self._open.pop(job.job_id, None) is not None:
            job.state_observer = None
            if not job.terminal:
                self._open_states[job.state] -= 1

    def discard(self, job: Job) -> None:
        """Forget a job that never reached ComfyUI (e.g. it failed validation)."""
        self._jobs.pop(job.job_id, None)
        self._close(job)
        if self._by_request.get(job.spec.request_id) == job.job_id:
            del self._by_request[job.spec.request_id]
        self._finished.pop(job.job_id, None)

    def finished(self, job: Job) -> None:
        """Note that ``job`` ended, evicting the oldest finished jobs past the bound."""
        self._close(job)
        self._finished[job.job_id] = None
        while len(self._finished) > self._max_finished:
            old_id, _ = self._finished.popitem(last=False)
            old = self._jobs.pop(old_id, None)
            if self.on_forget is not None:
                self.on_forget(old_id)
            if old is not None and self._by_request.get(old.spec.request_id) == old_id:
                del self._by_request[old.spec.request_id]

    def open_jobs(self) -> list[Job]:
        return [j for j in self._open.values() if not j.terminal]

    def in_states(self, states: Iterable[JobState]) -> list[Job]:
        wanted = set(states)
        return [j for j in self._jobs.values() if not wanted or j.state in wanted]

    def count(self, state: JobState) -> int:
        if state.terminal:
            return sum(1 for j in self._jobs.values() if j.state is state)
        return self._open_states[state]

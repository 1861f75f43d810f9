"""The gateway's waiting line: fair share across callers, priority within a turn.

Callers with waiting jobs take turns, one job per turn, so one caller's
thousand queued jobs never starve another caller's one. Within a caller's
turn its jobs go in this order: ones that came back (their backend was lost
or gave them up), then ``high`` ones, then the rest, each by arrival.

Positions are the order :meth:`WaitingLine.order` would hand the jobs out if
every backend could run every job and nothing else arrived: exact for the
line as it stands.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class _CallerQueue:
    returned: deque[str] = field(default_factory=deque)
    high: deque[str] = field(default_factory=deque)
    normal: deque[str] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.returned) + len(self.high) + len(self.normal)

    def __iter__(self) -> Iterator[str]:
        yield from self.returned
        yield from self.high
        yield from self.normal

    def remove(self, job_id: str) -> bool:
        for part in (self.returned, self.high, self.normal):
            try:
                part.remove(job_id)
            except ValueError:
                continue
            return True
        return False


class WaitingLine:
    def __init__(self) -> None:
        self._callers: dict[str, _CallerQueue] = {}
        self._caller_of: dict[str, str] = {}
        # Start-time fair queueing over callers: each active caller has the
        # virtual time of its next turn; the smallest goes first (ties: who
        # joined first). A caller that joins starts at the current virtual
        # time, so time spent idle banks no turns.
        self._next_turn: dict[str, int] = {}
        self._joined: dict[str, int] = {}
        self._idle_turn: dict[str, int] = {}
        self._now = 0
        self._joins = 0

    def __len__(self) -> int:
        return len(self._caller_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._caller_of

    def caller_of(self, job_id: str) -> str | None:
        return self._caller_of.get(job_id)

    def waiting_for(self, caller: str) -> int:
        queue = self._callers.get(caller)
        return 0 if queue is None else len(queue)

    def waiting_by_caller(self) -> dict[str, int]:
        return {caller: len(queue) for caller, queue in self._callers.items()}

    def add(self, job_id: str, caller: str, *, high: bool = False) -> None:
        """A new job joins the back of its caller's line (``high``: ahead of normal ones)."""
        queue = self._join(job_id, caller)
        (queue.high if high else queue.normal).append(job_id)

    def put_back(self, job_id: str, caller: str) -> None:
        """A job that was handed out and came back goes first, its caller's turn kept."""
        queue = self._join(job_id, caller)
        queue.returned.append(job_id)
        self._next_turn[caller] = min(self._next_turn[caller], self._now - 1)

    def _join(self, job_id: str, caller: str) -> _CallerQueue:
        if job_id in self._caller_of:
            raise ValueError(f"job {job_id} is already waiting")
        queue = self._callers.get(caller)
        if queue is None:
            queue = self._callers[caller] = _CallerQueue()
            self._next_turn[caller] = max(self._now, self._idle_turn.pop(caller, self._now))
            self._joined[caller] = self._joins
            self._joins += 1
        self._caller_of[job_id] = caller
        return queue

    def remove(self, job_id: str) -> bool:
        """Take ``job_id`` out of the line (cancelled, or handed out); False if absent."""
        caller = self._caller_of.pop(job_id, None)
        if caller is None:
            return False
        queue = self._callers[caller]
        queue.remove(job_id)
        if not queue:
            del self._callers[caller]
            del self._joined[caller]
            turn = self._next_turn.pop(caller)
            if turn > self._now:
                # Served ahead of the clock: the caller comes back no earlier.
                self._idle_turn[caller] = turn
        return True

    def _turns(self) -> list[str]:
        return sorted(self._callers, key=lambda c: (self._next_turn[c], self._joined[c]))

    def take(self, runnable: Callable[[str], bool]) -> str | None:
        """Hand out the first job in turn order that ``runnable`` accepts.

        A caller with nothing runnable keeps its turn, so a job that only a
        busy backend can run loses nothing while others go ahead of it.
        """
        for caller in self._turns():
            for job_id in self._callers[caller]:
                if runnable(job_id):
                    turn = self._next_turn[caller]
                    self._now = max(self._now, turn)
                    self._next_turn[caller] = turn + 1
                    self.remove(job_id)
                    return job_id
        return None

    def position(self, job_id: str) -> int:
        """1-based place in :meth:`order`, 0 when not waiting; O(callers), not O(jobs).

        A caller's jobs take turns numbered from its next turn; a job goes
        after every job of another caller with an earlier turn, or the same
        turn and an earlier join.
        """
        caller = self._caller_of.get(job_id)
        if caller is None:
            return 0
        queue = self._callers[caller]
        if queue.normal and queue.normal[-1] == job_id:
            index = len(queue) - 1  # a new job at the back: the common case
        else:
            index = next(i for i, j in enumerate(queue) if j == job_id)
        turn = self._next_turn[caller] + index
        joined = self._joined[caller]
        ahead = index
        for other, jobs in self._callers.items():
            if other != caller:
                before = turn - self._next_turn[other] + (self._joined[other] < joined)
                ahead += max(0, min(len(jobs), before))
        return ahead + 1

    def order(self) -> Iterator[str]:
        """Every waiting job in the order the line would hand them out."""
        heap = [
            (self._next_turn[c], self._joined[c], iter(self._callers[c])) for c in self._turns()
        ]
        heapq.heapify(heap)
        while heap:
            turn, joined, jobs = heapq.heappop(heap)
            job_id = next(jobs, None)
            if job_id is not None:
                yield job_id
                heapq.heappush(heap, (turn + 1, joined, jobs))

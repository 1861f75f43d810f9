"""Which waiting jobs a replica takes from the line it shares with other
replicas: the same rules as :class:`~.line.WaitingLine`, over rows of a
database instead of memory. No I/O.

Fair share is start-time fair queueing with a tag per job: a caller's next
job starts at ``max(virtual clock, the caller's last finish)`` and finishes
one turn later; the line hands out the smallest start first, and the clock
moves to the start of what was handed out. A caller that was idle therefore
banks no turns, and one caller's thousand jobs take one turn in every
round, whichever replica hands them out.

Within a caller's turn, a ``high`` job goes before that caller's others:
the turn's tag passes to it (the two jobs swap tags), so no other caller
loses a turn to it. A job that came back (its backend was lost) keeps its
old tag, below the clock: it goes first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..backends.inventory import Needs


@dataclass(frozen=True, slots=True)
class WaitingRow:
    job_id: str
    caller: str
    tag: float
    """Start tag: the virtual time of the job's turn."""
    high: bool
    seq: int
    """Arrival order (ties between equal tags)."""
    needs: Needs


@dataclass(frozen=True, slots=True)
class Pick:
    job_id: str
    tag: float
    """The turn it takes: the clock moves up to this."""


@dataclass(frozen=True, slots=True)
class Choice:
    picks: tuple[Pick, ...]
    retags: tuple[tuple[str, float], ...]
    """(job_id, new tag) for jobs that gave their turn to a high one."""


def next_tags(clock: float, last_finish: float | None) -> tuple[float, float]:
    """(start, finish) tags for a caller's new job."""
    start = clock if last_finish is None else max(clock, last_finish)
    return start, start + 1.0


def choose(rows: Sequence[WaitingRow], runnable: Callable[[Needs], bool], count: int) -> Choice:
    """Up to ``count`` jobs to hand out, in order, among ``rows`` (the front
    of the shared line, any order); ``runnable`` says what this replica's
    free backends can run."""
    left = sorted(rows, key=lambda r: (r.tag, r.seq))
    tags = {r.job_id: r.tag for r in rows}
    picks: list[Pick] = []
    retags: dict[str, float] = {}
    while len(picks) < count:
        turn = next((r for r in left if runnable(r.needs)), None)
        if turn is None:
            break
        # The turn is the caller's; its best runnable job takes it.
        mine = [r for r in left if r.caller == turn.caller and runnable(r.needs)]
        best = min(mine, key=lambda r: (not r.high, tags[r.job_id] > tags[turn.job_id], r.seq))
        tag = tags[turn.job_id]
        if best is not turn:
            tags[turn.job_id], tags[best.job_id] = tags[best.job_id], tag
            retags[turn.job_id] = tags[turn.job_id]
            retags.pop(best.job_id, None)
            left.sort(key=lambda r: (tags[r.job_id], r.seq))
        left.remove(best)
        picks.append(Pick(best.job_id, tag))
    return Choice(tuple(picks), tuple(sorted(retags.items())))

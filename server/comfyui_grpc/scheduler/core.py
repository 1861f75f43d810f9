"""The fleet scheduler's decisions, with no I/O and no asyncio.

Jobs wait in the gateway (late binding) and go to the first free backend
that can run them, fairly across callers (:class:`~.line.WaitingLine`).

Events come in as method calls: a job submitted or cancelled, a backend
added, up (with its inventory), down, lost or removed, a submission's or a
withdrawal's outcome, a prompt started or ended on ComfyUI. Decisions come
out as :mod:`actions <.actions>`, collected until :meth:`Scheduler.take_actions`.
An executor runs them and reports back with the same methods.

A backend holds at most one running prompt of ours plus ``prefetch`` waiting
ones, so its GPU never idles between two jobs and no job is handed out long
before a GPU is ready for it. A backend left idle with nothing it can run in
the line takes back a prompt waiting behind another backend's running one.

Safety, held by the property tests: a job is handed to ComfyUI only from the
line (so never twice unless ComfyUI gave it up or its backend was lost);
every delete or interrupt names a prompt that the job owns on that backend;
a cancelled job that never reached ComfyUI touches nothing; phases move
forward except back to the line.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backends.inventory import Inventory, Needs
from . import actions as act
from .line import WaitingLine

DEFAULT_PREFETCH = 1
POSITION_EXACT_UP_TO = 10
"""Positions up to this are reported at every change; further back, on a 10 % move."""


class Phase(enum.Enum):
    WAITING = "waiting"
    """In the gateway's line."""
    SUBMITTING = "submitting"
    """Handed to a backend; its POST /prompt has not answered yet."""
    PENDING = "pending"
    """In the backend's ComfyUI queue, not started."""
    WITHDRAWING = "withdrawing"
    """Being taken back out of the backend's queue."""
    RUNNING = "running"
    """ComfyUI is executing it."""
    RELEASED = "released"
    """No longer needs a backend (execution over, failed or cancelled)."""


@dataclass(slots=True)
class Ticket:
    job_id: str
    caller: str
    high: bool
    needs: Needs
    retry_on_loss: bool
    phase: Phase = Phase.WAITING
    backend: str = ""
    submissions: int = 0
    """Times handed to a backend; each outcome names the one it answers."""
    withdrawals: int = 0
    """Times a withdrawal was asked; likewise."""
    cancel_requested: bool = False
    reclaim_for: str = ""
    """The idle backend a withdrawal is for (empty: a cancel's withdrawal)."""


@dataclass(slots=True)
class BackendSlot:
    url: str
    order: int
    up: bool = False
    inventory: Inventory | None = None
    running: str | None = None
    pending: dict[str, None] = field(default_factory=dict)
    """Our prompts handed to it and not started, in hand-out order."""
    unheard: set[str] = field(default_factory=set)
    """Ours that ComfyUI has moved past (another prompt started) without our
    hearing how they ended: no longer holding the GPU, still to reconcile."""
    owed: set[str] = field(default_factory=set)
    """Prompts it may still hold after we gave them up: deleted when it is back."""
    reclaiming: bool = False
    """A withdrawal elsewhere is under way to give this idle backend work."""

    @property
    def load(self) -> int:
        return len(self.pending) + (self.running is not None)

    def leave(self, job_id: str) -> bool:
        """Take ``job_id`` off this backend; whether it held (or had held) the GPU."""
        held = self.running == job_id or job_id in self.unheard
        self.pending.pop(job_id, None)
        self.unheard.discard(job_id)
        if self.running == job_id:
            self.running = None
        return held


class Scheduler:
    def __init__(self, *, prefetch: int = DEFAULT_PREFETCH) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.prefetch = prefetch
        self.line = WaitingLine()
        self.tickets: dict[str, Ticket] = {}
        self.backends: dict[str, BackendSlot] = {}
        self._actions: list[act.Action] = []
        self._fit_cache: dict[tuple[str, str], bool] = {}
        self._positions: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._positions_dirty = False
        self._added = 0

    # -- reading -------------------------------------------------------------

    @property
    def positions_stale(self) -> bool:
        """The line changed since positions were last reported (:meth:`reposition`)."""
        return self._positions_dirty

    def take_actions(self) -> list[act.Action]:
        """The decisions made since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def position(self, job_id: str) -> int:
        """1-based place in the line; 0 when the job is not waiting in it."""
        if self._positions_dirty:
            return self.line.position(job_id)
        return self._positions.get(job_id, 0)

    def place(self, job_id: str) -> int:
        """Where a job that has not started waits: its place in the gateway's line,
        or once handed to a backend, among our prompts waiting there; 0 otherwise."""
        ticket = self.tickets.get(job_id)
        if ticket is None:
            return 0
        if ticket.phase is Phase.WAITING:
            return self.position(job_id)
        if ticket.phase in (Phase.SUBMITTING, Phase.PENDING, Phase.WITHDRAWING):
            slot = self.backends.get(ticket.backend)
            if slot is not None and job_id in slot.pending:
                return list(slot.pending).index(job_id) + 1
        return 0

    def jobs_on(self, url: str) -> list[str]:
        """Our prompts a backend holds or is being handed (running first)."""
        slot = self.backends.get(url)
        if slot is None:
            return []
        running = [slot.running] if slot.running is not None else []
        return running + list(slot.pending) + sorted(slot.unheard)

    def can_run(self, needs: Needs) -> list[str]:
        """Backends whose known inventory satisfies ``needs`` (up or not)."""
        return [
            s.url
            for s in self.backends.values()
            if s.inventory is not None and s.inventory.satisfies(needs)
        ]

    def waiting_by_caller(self) -> dict[str, int]:
        return self.line.waiting_by_caller()

    # -- jobs ----------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        *,
        caller: str,
        needs: Needs,
        high: bool = False,
        retry_on_loss: bool = False,
    ) -> None:
        """A new job joins the line."""
        if job_id in self.tickets:
            raise ValueError(f"job {job_id} is already scheduled")
        ticket = Ticket(job_id, caller, high, needs, retry_on_loss)
        self.tickets[job_id] = ticket
        self.line.add(job_id, caller, high=high)
        self._positions_dirty = True
        self._dispatch()

    def adopt(self, job_id: str, *, caller: str, needs: Needs, backend: str, running: bool,
              retry_on_loss: bool = False) -> None:  # fmt: skip
        """A job handed to ``backend`` before a restart; reconciliation will confirm it."""
        ticket = Ticket(job_id, caller, False, needs, retry_on_loss, backend=backend)
        ticket.submissions = 1
        self.tickets[job_id] = ticket
        slot = self._slot(backend)
        if running and slot.running is None:
            ticket.phase = Phase.RUNNING
            slot.running = job_id
        else:
            ticket.phase = Phase.PENDING
            slot.pending[job_id] = None

    def cancel(self, job_id: str) -> None:
        """Cancel: dropped from the line at once; on ComfyUI, deleted or interrupted."""
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.phase is Phase.RELEASED or ticket.cancel_requested:
            return
        ticket.cancel_requested = True
        match ticket.phase:
            case Phase.WAITING:
                self.line.remove(job_id)
                self._positions_dirty = True
                self._release(ticket)
                self._emit(act.Cancelled(job_id))
            case Phase.PENDING:
                self._withdraw(ticket)
            case Phase.RUNNING:
                self._emit(act.Interrupt(job_id, ticket.backend))
            case Phase.WITHDRAWING:
                ticket.reclaim_for = ""  # the withdrawal now ends in a cancel
            case Phase.SUBMITTING:
                pass  # decided when the submission's outcome is known
        self._dispatch()

    def _current(self, job_id: str, phase: Phase, attempt: int | None) -> Ticket | None:
        """The ticket an outcome is about, or None when the outcome is stale.

        An outcome names the hand-over (``attempt``) it answers: one that
        arrives after the job was handed out again is about an older one.
        None means the latest.
        """
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.phase is not phase:
            return None
        latest = ticket.submissions if phase is Phase.SUBMITTING else ticket.withdrawals
        if attempt is not None and attempt != latest:
            return None
        return ticket

    def submitted(self, job_id: str, attempt: int | None = None) -> None:
        """ComfyUI accepted the prompt (or may have: its answer was lost)."""
        ticket = self._current(job_id, Phase.SUBMITTING, attempt)
        if ticket is None:
            return
        ticket.phase = Phase.PENDING
        if ticket.cancel_requested:
            self._withdraw(ticket)

    def submit_failed(self, job_id: str, attempt: int | None = None, *, refused: bool) -> None:
        """The prompt did not land: ``refused`` by validation (final), or not sent.

        A job that was not sent goes back to the front of the line and its
        backend is taken as down until it is reported up again.
        """
        ticket = self._current(job_id, Phase.SUBMITTING, attempt)
        if ticket is None:
            return
        slot = self.backends.get(ticket.backend)
        if slot is not None:
            slot.pending.pop(job_id, None)
        if refused:
            self._release(ticket)
        else:
            if slot is not None:
                slot.up = False
            self._back_to_line(ticket)
        self._dispatch()

    def started(self, job_id: str) -> None:
        """ComfyUI began executing the prompt."""
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.phase not in (
            Phase.SUBMITTING,
            Phase.PENDING,
            Phase.WITHDRAWING,
        ):
            return
        slot = self._slot(ticket.backend)
        slot.pending.pop(job_id, None)
        if slot.running is not None and slot.running != job_id:
            # ComfyUI runs one prompt at a time: the one we thought running has
            # ended unheard. Reconciliation learns how; the GPU is not its.
            slot.unheard.add(slot.running)
        slot.unheard.discard(job_id)
        slot.running = job_id
        withdrawing = ticket.phase is Phase.WITHDRAWING
        ticket.phase = Phase.RUNNING
        if withdrawing:
            self._reclaim_over(ticket)
            if ticket.cancel_requested:
                self._emit(act.Interrupt(job_id, ticket.backend))
        self._dispatch()

    def finished(self, job_id: str) -> None:
        """The job needs its backend no more: execution ended, or the job did."""
        ticket = self.tickets.get(job_id)
        if ticket is None:
            return
        if ticket.phase is Phase.WAITING:
            self.line.remove(job_id)
            self._positions_dirty = True
        self._release(ticket)
        self._dispatch()

    def forget(self, job_id: str) -> None:
        """Drop a released job's ticket (the job left memory)."""
        ticket = self.tickets.get(job_id)
        if ticket is not None and ticket.phase is Phase.RELEASED:
            del self.tickets[job_id]
            for slot in self.backends.values():
                self._fit_cache.pop((job_id, slot.url), None)

    def withdrawn(self, job_id: str, attempt: int | None = None, *, owed: bool = False) -> None:
        """ComfyUI holds the prompt no more and never ran it; or, ``owed``, it
        could not be asked (unreachable) and is told to drop it when it is back."""
        ticket = self._current(job_id, Phase.WITHDRAWING, attempt)
        if ticket is None:
            return
        self._reclaim_over(ticket)
        slot = self._slot(ticket.backend)
        slot.pending.pop(job_id, None)
        if owed:
            slot.owed.add(job_id)
        if ticket.cancel_requested:
            self._release(ticket)
            self._emit(act.Cancelled(job_id))
        else:
            self._back_to_line(ticket)
        self._dispatch()

    def withdraw_failed(self, job_id: str, attempt: int | None = None) -> None:
        """The withdrawal could not be confirmed: the prompt stays where it is."""
        ticket = self._current(job_id, Phase.WITHDRAWING, attempt)
        if ticket is None:
            return
        self._reclaim_over(ticket)
        ticket.phase = Phase.PENDING
        self._dispatch()

    def prompt_missing(self, job_id: str) -> None:
        """ComfyUI no longer knows a prompt that had not finished (restart, cleared queue).

        Not started: back to the front of the line. Running: lost, unless the
        caller asked for a retry.
        """
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.phase in (Phase.WAITING, Phase.RELEASED):
            return
        was_running = self._slot(ticket.backend).leave(job_id)
        self._reclaim_over(ticket)
        self._requeue_or_lose(ticket, was_running, forgotten=True)
        self._dispatch()

    def requeue(self, job_id: str) -> None:
        """ComfyUI stopped the job for a reason not its own (an interrupt meant
        for another prompt): it goes back to the front of the line."""
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.phase in (Phase.WAITING, Phase.RELEASED):
            return
        self._slot(ticket.backend).leave(job_id)
        self._reclaim_over(ticket)
        if ticket.cancel_requested:
            self._release(ticket)
            self._emit(act.Cancelled(job_id))
        else:
            self._back_to_line(ticket)
        self._dispatch()

    # -- backends ---------------------------------------------------------------

    def add_backend(self, url: str) -> None:
        self._slot(url)

    def backend_up(self, url: str, inventory: Inventory | None = None) -> None:
        """The backend answers (socket connected); ``inventory`` when (re)read."""
        slot = self._slot(url)
        slot.up = True
        if inventory is not None:
            slot.inventory = inventory
            for key in [k for k in self._fit_cache if k[1] == url]:
                del self._fit_cache[key]
        if slot.owed:
            self._emit(act.DeleteOwed(url, tuple(sorted(slot.owed))))
        self._dispatch()

    def deletes_done(self, url: str, job_ids: tuple[str, ...]) -> None:
        slot = self.backends.get(url)
        if slot is not None:
            slot.owed.difference_update(job_ids)
            self._dispatch()

    def backend_down(self, url: str) -> None:
        """The backend stopped answering: nothing new goes there; its jobs stay for now."""
        slot = self.backends.get(url)
        if slot is not None:
            slot.up = False

    def backend_lost(self, url: str) -> None:
        """Down too long: its waiting prompts go back to the line, running ones are lost."""
        slot = self.backends.get(url)
        if slot is None:
            return
        slot.up = False
        for job_id in reversed(self.jobs_on(url)):
            ticket = self.tickets[job_id]
            was_running = slot.leave(job_id)
            if not was_running:
                # It may still sit in that ComfyUI's queue: deleted when it is back.
                slot.owed.add(job_id)
            self._reclaim_over(ticket)
            self._requeue_or_lose(ticket, was_running)
        self._dispatch()

    def remove_backend(self, url: str) -> None:
        """The backend is gone for good (left DNS)."""
        if url in self.backends:
            self.backend_lost(url)
            del self.backends[url]
            for key in [k for k in self._fit_cache if k[1] == url]:
                del self._fit_cache[key]
            self._dispatch()

    # -- sharing the fleet with other gateway replicas --------------------------

    def room(self) -> list[Inventory]:
        """One inventory per prompt the backends could take now beyond what
        the line will give them: what to ask a shared queue for."""
        limit = 1 + self.prefetch
        spare: list[Inventory] = []
        for slot in self._free():
            assert slot.inventory is not None
            if slot.owed:
                continue  # deletes to make first: what it took might be one of them
            spare += [slot.inventory] * (limit - slot.load)
        return spare[len(self.line) :]

    def give_back(self) -> list[str]:
        """Empty the line: its jobs go back to a queue shared with other
        replicas (this one's backends have no room for them now)."""
        given = list(self.line.order())
        for job_id in given:
            self.line.remove(job_id)
            del self.tickets[job_id]
            for slot in self.backends.values():
                self._fit_cache.pop((job_id, slot.url), None)
        if given:
            self._positions_dirty = True
        return given

    def owe(self, url: str, job_ids: set[str]) -> None:
        """Prompts ``url`` may still hold for jobs that moved off it (recorded by
        a replica that drove it before): deleted when it is up."""
        slot = self._slot(url)
        slot.owed.update(job_ids)
        if slot.up and slot.owed:
            self._emit(act.DeleteOwed(url, tuple(sorted(slot.owed))))

    def owed_by(self, url: str) -> set[str]:
        slot = self.backends.get(url)
        return set(slot.owed) if slot is not None else set()

    def disown(self, url: str) -> list[str]:
        """Another replica drives ``url`` from now on: forget the backend and
        every job on it, with no action (that replica reconciles them)."""
        slot = self.backends.pop(url, None)
        if slot is None:
            return []
        dropped = [
            t.job_id
            for t in self.tickets.values()
            if t.backend == url and t.phase not in (Phase.WAITING, Phase.RELEASED)
        ]
        for ticket in self.tickets.values():
            if ticket.reclaim_for == url:
                ticket.reclaim_for = ""
        for job_id in dropped:
            self._reclaim_over(self.tickets.pop(job_id))
        for key in [k for k in self._fit_cache if k[1] == url]:
            del self._fit_cache[key]
        self._dispatch()
        return dropped

    # -- internals --------------------------------------------------------------

    def _emit(self, action: act.Action) -> None:
        self._actions.append(action)

    def _slot(self, url: str) -> BackendSlot:
        slot = self.backends.get(url)
        if slot is None:
            slot = self.backends[url] = BackendSlot(url, order=self._added)
            self._added += 1
        return slot

    def _release(self, ticket: Ticket) -> None:
        slot = self.backends.get(ticket.backend)
        if slot is not None:
            slot.leave(ticket.job_id)
        self._reclaim_over(ticket)
        ticket.phase = Phase.RELEASED

    def _reclaim_over(self, ticket: Ticket) -> None:
        if ticket.reclaim_for:
            slot = self.backends.get(ticket.reclaim_for)
            if slot is not None:
                slot.reclaiming = False
            ticket.reclaim_for = ""

    def _back_to_line(self, ticket: Ticket) -> None:
        ticket.phase = Phase.WAITING
        self.line.put_back(ticket.job_id, ticket.caller)
        self._positions_dirty = True
        self._emit(act.Requeued(ticket.job_id, ticket.backend))

    def _requeue_or_lose(
        self, ticket: Ticket, was_running: bool, *, forgotten: bool = False
    ) -> None:
        if ticket.cancel_requested:
            self._release(ticket)
            self._emit(act.Cancelled(ticket.job_id))
        elif was_running and not ticket.retry_on_loss:
            self._release(ticket)
            self._emit(act.Lost(ticket.job_id, ticket.backend, forgotten))
        else:
            self._back_to_line(ticket)

    def _fits(self, job_id: str, slot: BackendSlot) -> bool:
        if job_id in slot.owed or slot.inventory is None:
            return False
        key = (job_id, slot.url)
        fits = self._fit_cache.get(key)
        if fits is None:
            fits = self._fit_cache[key] = slot.inventory.satisfies(self.tickets[job_id].needs)
        return fits

    def _free(self) -> Iterator[BackendSlot]:
        """Backends that can take a prompt now, least loaded first."""
        limit = 1 + self.prefetch
        free = [
            s for s in self.backends.values() if s.up and s.inventory is not None and s.load < limit
        ]
        free.sort(key=lambda s: (s.load, s.order))
        return iter(free)

    def _dispatch(self) -> None:
        while len(self.line):
            for slot in self._free():
                job_id = self.line.take(lambda j, s=slot: self._fits(j, s))  # type: ignore[misc]
                if job_id is not None:
                    self._hand_out(self.tickets[job_id], slot)
                    break
            else:
                break
        self._reclaim()

    def _hand_out(self, ticket: Ticket, slot: BackendSlot) -> None:
        self._positions_dirty = True
        ticket.phase = Phase.SUBMITTING
        ticket.backend = slot.url
        ticket.submissions += 1
        slot.pending[ticket.job_id] = None
        self._emit(act.Submit(ticket.job_id, slot.url, ticket.submissions))

    def _withdraw(self, ticket: Ticket) -> None:
        ticket.phase = Phase.WITHDRAWING
        ticket.withdrawals += 1
        self._emit(act.Withdraw(ticket.job_id, ticket.backend, ticket.withdrawals))

    def _reclaim(self) -> None:
        """Give an idle backend a prompt that waits behind another one's running job."""
        for idle in self.backends.values():
            if not (idle.up and idle.inventory is not None and idle.load == 0):
                continue
            if idle.reclaiming:
                continue
            for busy in self.backends.values():
                if busy is idle or busy.running is None:
                    continue
                candidate = next(
                    (
                        j
                        for j in busy.pending
                        if self.tickets[j].phase is Phase.PENDING
                        and not self.tickets[j].cancel_requested
                        and self._fits(j, idle)
                    ),
                    None,
                )
                if candidate is not None:
                    ticket = self.tickets[candidate]
                    ticket.reclaim_for = idle.url
                    idle.reclaiming = True
                    self._withdraw(ticket)
                    break

    # -- positions ---------------------------------------------------------------

    def reposition(self) -> act.Positions | None:
        """Positions that changed enough to report since the last call."""
        if not self._positions_dirty:
            return None
        self._positions = {j: i for i, j in enumerate(self.line.order(), start=1)}
        self._positions_dirty = False
        changes: list[tuple[str, int]] = []
        reported = self._reported
        for job_id in [j for j in reported if j not in self._positions]:
            del reported[job_id]
        for job_id, position in self._positions.items():
            last = reported.get(job_id)
            if last == position:
                continue
            if (
                last is None
                or position <= POSITION_EXACT_UP_TO
                or abs(last - position) * 10 >= last
            ):
                reported[job_id] = position
                changes.append((job_id, position))
        return act.Positions(tuple(changes)) if changes else None

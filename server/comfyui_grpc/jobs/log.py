"""Per-job event log with fan-out to any number of subscribers.

Appending is synchronous and never waits for a reader: each subscriber owns a
bounded backlog. When a backlog is full, step progress for the same node is
merged (the newest wins); state transitions are always kept. A slow reader
therefore sees fewer progress events, never a missing transition, and never
slows the job or other readers down.

Everything runs on one event loop, so taking a snapshot and subscribing happen
without a gap between them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator

from .events import Event, NodeProgressed

DEFAULT_BACKLOG = 256
DEFAULT_MAX_EVENTS = 20_000
RESTART_SEQUENCE_GAP = 1000


class Subscription:
    """One reader's view of a log: replayed events first, then live ones."""

    def __init__(self, log: EventLog, backlog: int, on_coalesce: Callable[[], None] | None) -> None:
        self._log = log
        self._pending: deque[Event] = deque()
        self._backlog = backlog
        self._wakeup = asyncio.Event()
        self._closed = False
        self._on_coalesce = on_coalesce
        self.coalesced = 0

    def _push(self, event: Event) -> None:
        if self._closed:
            return
        if event.coalescible and len(self._pending) >= self._backlog:
            self._merge_progress(event)
        self._pending.append(event)
        self._wakeup.set()

    def _merge_progress(self, event: Event) -> None:
        """Drop the oldest pending progress of the same node (else any progress)."""
        assert isinstance(event.payload, NodeProgressed)
        node = event.payload.node_id
        victim: Event | None = None
        for pending in self._pending:
            if isinstance(pending.payload, NodeProgressed):
                if pending.payload.node_id == node:
                    victim = pending
                    break
                if victim is None:
                    victim = pending
        if victim is not None:
            self._pending.remove(victim)
            self.coalesced += 1
            if self._on_coalesce is not None:
                self._on_coalesce()

    async def next(self) -> Event | None:
        """The next event, or None once the subscription is closed and drained."""
        while not self._pending:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._pending.popleft()

    def poll(self) -> Event | None:
        """The next pending event without waiting, or None."""
        return self._pending.popleft() if self._pending else None

    @property
    def pending(self) -> bool:
        """An event waits to be taken."""
        return bool(self._pending)

    @property
    def finished(self) -> bool:
        """Closed and drained: nothing more will come."""
        return self._closed and not self._pending

    def nudge(self) -> None:
        """Wake a :meth:`wait` with nothing new (another source has something)."""
        self._wakeup.set()

    async def wait(self) -> None:
        """Until an event is pending, the subscription closes, or :meth:`nudge`."""
        if self._pending or self._closed:
            return
        self._wakeup.clear()
        await self._wakeup.wait()

    def drain(self) -> list[Event]:
        """Everything pending now, without waiting (for batched writers)."""
        items = list(self._pending)
        self._pending.clear()
        return items

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._log._subscribers.discard(self)
            self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event


class EventLog:
    """The ordered events of one job, with live subscribers.

    The log is bounded for replay, and cheap however many events ComfyUI
    causes (a hostile one can send node changes by the ten thousand). Once it
    holds ``max_events`` and half as many again, it is compacted: step
    progress superseded by a later step of the same node is dropped first
    (progress coalesced), then, while still over ``max_events``, the oldest
    node-level events. Transitions and artifacts are never dropped. The next
    compaction waits until the log has grown by half again, so each append
    costs amortised O(1). Replay after an old sequence therefore skips only
    node-level events; the job's snapshot, built from the job itself, stays
    exact.
    """

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self._events: list[Event] = []
        self._subscribers: set[Subscription] = set()
        self._max_events = max_events
        self._compact_at = max_events + max_events // 2
        self._last_sequence = 0
        self._ended = False

    @property
    def last_sequence(self) -> int:
        return self._last_sequence

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def next_sequence(self) -> int:
        return self._last_sequence + 1

    def append(self, event: Event) -> None:
        if self._ended:
            raise RuntimeError(f"job {event.job_id}: event after the terminal event")
        if event.sequence != self._last_sequence + 1:
            raise ValueError(f"sequence {event.sequence} does not follow {self._last_sequence}")
        self._last_sequence = event.sequence
        self._events.append(event)
        if len(self._events) > self._compact_at:
            self._compact()
        for sub in list(self._subscribers):
            sub._push(event)
        if event.terminal:
            self._ended = True
            for sub in list(self._subscribers):
                sub.close()
            # Finished jobs are kept by the thousand; their serialised events
            # are rebuilt on demand for the rare late reader.
            for old in self._events:
                old.wire = None

    def follow(self, event: Event) -> bool:
        """Append an event another gateway replica recorded: its sequences
        rise but may skip (that replica may have taken the job over after a
        crash). Older or repeated ones are ignored; whether it was appended."""
        if self._ended or event.sequence <= self._last_sequence:
            return False
        self._last_sequence = event.sequence - 1
        self.append(event)
        return True

    def _compact(self) -> None:
        """Coalesce progress, then drop the oldest node-level events over the cap; O(n)."""
        latest_step: set[str] = set()
        coalesced: list[Event] = []
        for event in reversed(self._events):
            payload = event.payload
            if isinstance(payload, NodeProgressed):
                if payload.node_id in latest_step:
                    continue
                latest_step.add(payload.node_id)
            coalesced.append(event)
        coalesced.reverse()
        excess = len(coalesced) - self._max_events
        kept: list[Event] = []
        for event in coalesced:
            if excess > 0 and event.node_level:
                excess -= 1
                continue
            kept.append(event)
        self._events = kept
        self._compact_at = len(kept) + max(self._max_events, len(kept)) // 2

    def restore(self, events: list[Event], *, ended: bool = False, gap: bool = True) -> None:
        """Reload persisted events after a restart.

        Events written just before a crash may be missing from the store while a
        client has already seen them; new sequences therefore start past a gap,
        so no number a client saw is ever reused.
        """
        self._events = list(events)
        self._compact_at = len(self._events) + max(self._max_events, len(self._events)) // 2
        last = events[-1].sequence if events else 0
        self._ended = ended or (bool(events) and events[-1].terminal)
        self._last_sequence = last if self._ended or not gap else last + RESTART_SEQUENCE_GAP

    def events_after(self, sequence: int) -> Iterator[Event]:
        for event in self._events:
            if event.sequence > sequence:
                yield event

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def subscribe(
        self,
        *,
        after_sequence: int | None = None,
        backlog: int = DEFAULT_BACKLOG,
        on_coalesce: Callable[[], None] | None = None,
    ) -> Subscription:
        """Subscribe to live events, first replaying those after ``after_sequence``.

        A subscription to an ended log yields the replay and then ends.
        """
        sub = Subscription(self, backlog, on_coalesce)
        if after_sequence is not None:
            sub._pending.extend(self.events_after(after_sequence))
        if self._ended:
            sub._closed = True
        else:
            self._subscribers.add(sub)
        return sub

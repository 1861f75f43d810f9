"""A job's newest preview image, and the streams watching it.

Previews are not events: a sampler can render one per step for minutes, and
nobody wants the old ones. So a job keeps exactly one (the newest), in
memory only; it is never written to the job store, never in the event log,
and consumes no sequence number, so resuming a stream stays exact.

Publishing is synchronous and O(watchers): it replaces the image, bumps a
version and pokes each watching stream. A stream compares versions to know
whether it has sent the newest one; a slow reader therefore skips straight
to the newest image and never builds a backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from .events import Event
from .log import Subscription


@dataclass(frozen=True, slots=True)
class NodePreview:
    """One intermediate image of a node, with the node's step when known (else 0/0)."""

    node_id: str
    class_type: str
    content_type: str
    image: bytes
    value: int = 0
    max: int = 0


class PreviewSlot:
    """The newest preview of one job plus a version counter (0: none yet)."""

    __slots__ = ("_latest", "_version", "_watchers")

    def __init__(self) -> None:
        self._latest: NodePreview | None = None
        self._version = 0
        self._watchers: set[Callable[[], None]] = set()

    @property
    def version(self) -> int:
        """Bumped by every publish; a stream has the newest when its version equals this."""
        return self._version

    @property
    def latest(self) -> NodePreview | None:
        return self._latest

    def publish(self, preview: NodePreview) -> None:
        """Replace the newest preview and wake every watching stream."""
        self._latest = preview
        self._version += 1
        for wake in list(self._watchers):
            wake()

    def clear(self) -> None:
        """Forget the image (the job ended: nobody will stream it again)."""
        self._latest = None

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` on every publish until the returned function is called."""
        self._watchers.add(wake)
        return lambda: self._watchers.discard(wake)


async def with_previews(
    subscription: Subscription, slot: PreviewSlot, min_interval: float
) -> AsyncGenerator[Event | NodePreview]:
    """The subscription's events with the slot's newest previews merged in.

    Events always go first: a preview is sent only when no event is
    pending, at most once per ``min_interval`` seconds, and only if it is
    newer than the last one sent (a preview already in the slot when the
    stream opens is sent at once). Ends when the subscription does, so
    nothing follows the terminal event.
    """
    loop = asyncio.get_running_loop()
    sent_version = 0
    next_at = 0.0
    unwatch = slot.watch(subscription.nudge)
    try:
        while True:
            event = subscription.poll()
            if event is not None:
                yield event
                continue
            if subscription.finished:
                return
            deadline: float | None = None
            latest = slot.latest
            if latest is not None and slot.version != sent_version:
                now = loop.time()
                if now >= next_at:
                    # A preview and its step's progress arrive together: let
                    # every stream woken for events write first, then send.
                    await asyncio.sleep(0)
                    if subscription.pending:
                        continue
                    latest = slot.latest or latest
                    sent_version, next_at = slot.version, now + min_interval
                    yield latest
                    continue
                deadline = next_at
            try:
                async with asyncio.timeout_at(deadline):
                    await subscription.wait()
            except TimeoutError:
                pass
    finally:
        unwatch()

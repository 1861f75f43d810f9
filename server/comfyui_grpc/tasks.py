"""A named set of background tasks owned by one component, and supervision
for the long-lived ones.

Nothing is fire-and-forget: every task is registered, logged if it fails,
and cancelled and awaited on close. A task that must run for the process's
life (a backend's socket, a reconcile loop, a flush loop) is run under
:func:`supervise`: an unexpected exception is logged and counted and the
task starts again after a back-off, so one bug triggered by one bad input
never silently disables a backend. A task that keeps crashing is given up
on and reported, so liveness can fail and the pod be restarted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """How :func:`supervise` restarts a task that raised."""

    initial_delay_seconds: float = 0.2
    max_delay_seconds: float = 10.0
    max_crashes: int = 10
    """Crashes within ``window_seconds`` after which the task is given up on."""
    window_seconds: float = 120.0


DEFAULT_POLICY = RestartPolicy()

CrashHandler = Callable[[str, BaseException], None]


async def supervise(
    factory: Callable[[], Coroutine[Any, Any, object]],
    name: str,
    *,
    policy: RestartPolicy = DEFAULT_POLICY,
    on_crash: CrashHandler | None = None,
    on_give_up: CrashHandler | None = None,
) -> None:
    """Run ``factory()`` until it returns or is cancelled, restarting it when it raises.

    Each crash is logged with its traceback and told to ``on_crash(name,
    exc)`` (count it). Restarts back off exponentially with jitter, from
    ``initial_delay_seconds`` doubling per crash still inside the window.
    After more than ``max_crashes`` crashes within ``window_seconds`` the
    task is not restarted: ``on_give_up(name, exc)`` is told (fail liveness)
    and this returns. Cancellation always propagates.
    """
    crashes: list[float] = []
    while True:
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < policy.window_seconds] + [now]
            if on_crash is not None:
                on_crash(name, exc)
            if len(crashes) > policy.max_crashes:
                log.critical(
                    "task %s crashed %d times in %.0f s; giving up on it",
                    name,
                    len(crashes),
                    policy.window_seconds,
                    exc_info=exc,
                )
                if on_give_up is not None:
                    on_give_up(name, exc)
                return
            delay = min(
                policy.max_delay_seconds,
                policy.initial_delay_seconds * 2 ** (len(crashes) - 1),
            )
            log.error("task %s crashed; restarting in %.1f s", name, delay, exc_info=exc)
        await asyncio.sleep(delay * (0.5 + random.random() / 2))


async def within(awaitable: Awaitable[object], timeout: float | None) -> bool:
    """Await ``awaitable`` for at most ``timeout`` seconds; False if it timed out.

    Built on ``asyncio.timeout``: unlike ``wait_for`` on Python 3.11, it never
    swallows a cancellation that lands as the awaited thing completes, so
    loops using it always stop when cancelled.
    """
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except TimeoutError:
        return False
    return True


class TaskSet:
    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self._owner} is closed")
        task = asyncio.create_task(coro, name=f"{self._owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_supervised(
        self,
        factory: Callable[[], Coroutine[Any, Any, object]],
        name: str,
        *,
        policy: RestartPolicy = DEFAULT_POLICY,
        on_crash: CrashHandler | None = None,
        on_give_up: CrashHandler | None = None,
    ) -> asyncio.Task[Any]:
        """Spawn a long-lived task under :func:`supervise`."""
        return self.spawn(
            supervise(factory, name, policy=policy, on_crash=on_crash, on_give_up=on_give_up),
            name,
        )

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def wait(self, timeout: float | None) -> bool:
        """Wait for running tasks to end by themselves; True if they all did."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def close(self) -> None:
        """Cancel every task and wait for them; safe to call twice."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

"""Supervision of long-lived tasks: restart after a crash, give up past the budget."""

from __future__ import annotations

import asyncio

import pytest
from comfyui_grpc.tasks import RestartPolicy, supervise

FAST = RestartPolicy(initial_delay_seconds=0.001, max_delay_seconds=0.002, max_crashes=3)


async def test_a_crashed_task_is_restarted_until_it_returns() -> None:
    runs: list[int] = []
    crashes: list[str] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ValueError("bad input")

    await supervise(flaky, "flaky", policy=FAST, on_crash=lambda n, e: crashes.append(n))
    assert len(runs) == 3
    assert crashes == ["flaky", "flaky"]


async def test_a_task_that_keeps_crashing_is_given_up_on() -> None:
    gave_up: list[BaseException] = []

    async def broken() -> None:
        raise RuntimeError("always")

    await supervise(broken, "broken", policy=FAST, on_give_up=lambda n, e: gave_up.append(e))
    assert len(gave_up) == 1
    assert isinstance(gave_up[0], RuntimeError)


async def test_cancellation_is_never_taken_for_a_crash() -> None:
    started = asyncio.Event()
    crashes: list[str] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        supervise(forever, "forever", policy=FAST, on_crash=lambda n, e: crashes.append(n))
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert crashes == []

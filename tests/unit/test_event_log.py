"""The per-job event log: replay, live fan-out, coalescing for slow readers."""

from __future__ import annotations

import asyncio

import pytest
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.log import EventLog
from comfyui_grpc.jobs.model import JobFailure, JobState


def _event(log: EventLog, payload: ev.Payload, state: JobState = JobState.RUNNING) -> ev.Event:
    event = ev.Event(
        job_id="j", sequence=log.next_sequence(), state=state, time=0.0, payload=payload
    )
    log.append(event)
    return event


def _progress(node: str, value: int) -> ev.NodeProgressed:
    return ev.NodeProgressed(node, "KSampler", value, 100, value / 100, value / 200)


def test_sequences_must_follow() -> None:
    log = EventLog()
    _event(log, ev.Started())
    with pytest.raises(ValueError, match="does not follow"):
        log.append(ev.Event("j", 5, JobState.RUNNING, 0.0, ev.Started()))


async def test_replay_then_live_each_exactly_once() -> None:
    log = EventLog()
    for node in "abc":
        _event(log, ev.NodeStarted(node, "X"))
    sub = log.subscribe(after_sequence=1)
    _event(log, ev.NodeStarted("d", "X"))
    _event(log, ev.Succeeded(()), JobState.SUCCEEDED)
    seen = [e.sequence async for e in sub]
    assert seen == [2, 3, 4, 5]


async def test_after_zero_replays_everything_and_none_replays_nothing() -> None:
    log = EventLog()
    _event(log, ev.Started())
    everything = log.subscribe(after_sequence=0)
    live_only = log.subscribe()
    _event(log, ev.Cancelled(was_running=True), JobState.CANCELLED)
    assert [e.sequence async for e in everything] == [1, 2]
    assert [e.sequence async for e in live_only] == [2]


async def test_subscription_to_ended_log_replays_and_ends() -> None:
    log = EventLog()
    _event(log, ev.Started())
    _event(log, ev.Failed(JobFailure(reason="X", message="m")), JobState.FAILED)
    sub = log.subscribe(after_sequence=0)
    assert [e.sequence async for e in sub] == [1, 2]
    with pytest.raises(RuntimeError):
        _event(log, ev.Started())


async def test_slow_reader_gets_coalesced_progress_but_every_transition() -> None:
    log = EventLog()
    slow = log.subscribe(backlog=4)
    fast = log.subscribe(backlog=4)
    fast_seen: list[int] = []

    async def read_fast() -> None:
        async for event in fast:
            fast_seen.append(event.sequence)

    reader = asyncio.create_task(read_fast())
    _event(log, ev.NodeStarted("a", "KSampler"))
    for step in range(1, 50):
        _event(log, _progress("a", step))
        await asyncio.sleep(0)  # let the fast reader keep up
    _event(log, ev.NodeFinished("a", "KSampler"))
    _event(log, ev.NodeStarted("b", "VAEDecode"))
    _event(log, ev.Succeeded(()), JobState.SUCCEEDED)
    await reader
    slow_events = [e async for e in slow]
    transitions = [e for e in slow_events if not e.coalescible]
    assert [type(e.payload) for e in transitions] == [
        ev.NodeStarted,
        ev.NodeFinished,
        ev.NodeStarted,
        ev.Succeeded,
    ]
    assert slow.coalesced > 0
    assert len(slow_events) < 53
    # The newest progress survives, and order is preserved.
    progress = [e for e in slow_events if e.coalescible]
    assert progress[-1].payload == _progress("a", 49)
    sequences = [e.sequence for e in slow_events]
    assert sequences == sorted(sequences)
    assert fast_seen == list(range(1, 54))


def test_compaction_keeps_transitions() -> None:
    log = EventLog(max_events=20)
    _event(log, ev.NodeStarted("a", "KSampler"))
    for step in range(100):
        _event(log, _progress("a", step))
    _event(log, ev.NodeFinished("a", "KSampler"))
    kept = list(log)
    assert len(kept) <= 21
    assert isinstance(kept[0].payload, ev.NodeStarted)
    assert isinstance(kept[-1].payload, ev.NodeFinished)
    assert log.last_sequence == 102

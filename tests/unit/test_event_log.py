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


def test_a_flood_of_node_changes_costs_amortised_constant_time() -> None:
    """30,000 node changes (60,000 events) past the cap: each append stays cheap.

    The old compaction ran on every append past the cap and kept every
    non-progress event, so each append walked the whole log (53 s of event
    loop for this flood); here compaction runs once per half-cap appends.
    """
    log = EventLog(max_events=2_000)
    walked = 0
    original = log._compact

    def counting_compact() -> None:
        nonlocal walked
        walked += len(list(log))
        original()

    log._compact = counting_compact  # type: ignore[method-assign]
    _event(log, ev.Queued(1, "b"), JobState.QUEUED)
    _event(log, ev.Started())
    for change in range(30_000):
        node = str(change % 7)
        _event(log, ev.NodeFinished(str((change - 1) % 7), "X"))
        _event(log, ev.NodeStarted(node, "X"))
        _event(log, _progress(node, change % 100))
    appended = log.last_sequence
    assert walked <= 4 * appended  # amortised O(1) per append
    kept = list(log)
    assert len(kept) <= 3_000
    assert [type(e.payload) for e in kept[:2]] == [ev.Queued, ev.Started]
    assert kept[-1].sequence == appended
    sequences = [e.sequence for e in kept]
    assert sequences == sorted(set(sequences))


def test_progress_is_coalesced_to_the_newest_step_of_each_node() -> None:
    log = EventLog(max_events=10)
    _event(log, ev.NodeStarted("a", "KSampler"))
    for step in range(20):
        _event(log, _progress("a", step))
    _event(log, ev.NodeStarted("b", "KSampler"))
    _event(log, _progress("b", 1))
    kept = [e.payload for e in log]
    steps = [p for p in kept if isinstance(p, ev.NodeProgressed)]
    assert [(p.node_id, p.value) for p in steps] == [("a", 19), ("b", 1)]
    assert isinstance(kept[0], ev.NodeStarted)


def test_transitions_and_artifacts_survive_any_flood() -> None:
    log = EventLog(max_events=50)
    _event(log, ev.Started())
    for change in range(1_000):
        _event(log, ev.NodeStarted(str(change), "X"))
    _event(log, ev.Uploading(artifact_count=1))
    _event(log, ev.Succeeded(()), JobState.SUCCEEDED)
    kinds = [type(e.payload) for e in log if not e.node_level]
    assert kinds == [ev.Started, ev.Uploading, ev.Succeeded]

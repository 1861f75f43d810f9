"""A job followed from another replica: step progress applied from the
notification itself, anything else read from the store, in order."""

from __future__ import annotations

import json
from typing import Any

from comfyui_grpc.cluster.mirrors import Mirrors
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.model import JobKind, JobState
from comfyui_grpc.jobs.records import event_to_json
from comfyui_grpc.state.postgres import MAX_NEWS_BYTES, event_news

JOB = "00000000-0000-4000-8000-000000000001"
GRAPH = {"1": {"class_type": "KSampler", "inputs": {"seed": 1}}}


class Store:
    """Stands in for SharedState: counts the reads a mirror makes and
    answers them from ``events``."""

    def __init__(self, events: list[ev.Event] | None = None) -> None:
        self.reads = 0
        self.asked: dict[str, int] = {}
        self.events = events or []

    async def news_many(self, after: dict[str, int]) -> dict[str, Any]:
        self.reads += 1
        self.asked = after
        return {j: (None, [e for e in self.events if e.sequence > n]) for j, n in after.items()}


def running_job() -> Job:
    job = Job(JOB, JobSpec(kind=JobKind.WORKFLOW, workflow=GRAPH, workflow_sha256="0"))
    job.queued(1, "")
    job.started()
    return job


def event(sequence: int, payload: ev.Payload, state: JobState = JobState.RUNNING) -> ev.Event:
    return ev.Event(job_id=JOB, sequence=sequence, state=state, time=1.0, payload=payload)


def step(sequence: int, value: int) -> ev.Event:
    return event(sequence, ev.NodeProgressed("1", "KSampler", value, 10, value / 10, value / 10))


def news(*events: ev.Event) -> str:
    [payload] = event_news([(e, event_to_json(e)) for e in events])
    return payload


def test_step_progress_that_follows_on_is_applied_without_a_read() -> None:
    store = Store()
    mirrors = Mirrors(store)  # type: ignore[arg-type]
    job = mirrors.add(running_job())
    mirrors._dirty.clear()
    sub = job.log.subscribe()
    mirrors.notified(news(step(3, 1), step(4, 2)))
    assert [e.sequence for e in sub.drain()] == [3, 4]
    assert not mirrors._dirty


def test_transitions_gaps_and_big_news_are_read_from_the_store() -> None:
    mirrors = Mirrors(Store())  # type: ignore[arg-type]
    job = mirrors.add(running_job())
    for payload in (
        news(event(3, ev.Succeeded(()), JobState.SUCCEEDED)),  # a transition
        news(step(5, 1)),  # a gap: sequence 3 and 4 unseen
        news(*(step(n, n) for n in range(3, 200))),  # too big to carry its events
    ):
        mirrors._dirty.clear()
        mirrors.notified(payload)
        assert mirrors._dirty == {JOB}
        assert job.log.last_sequence == 2
        assert not job.terminal
    assert len(news(*(step(n, n) for n in range(3, 200)))) <= MAX_NEWS_BYTES


def test_malformed_news_is_ignored_and_leaves_the_job_to_its_next_read() -> None:
    """A notification is a hint: one this replica cannot read (another
    version's, garbled) must not end the listener that called it."""
    mirrors = Mirrors(Store())  # type: ignore[arg-type]
    job = mirrors.add(running_job())
    unknown = {"sequence": 3, "state": 2, "time": 1.0, "payload": {"type": "no-such-event"}}
    for payload in (
        "not json",
        "[1, 2]",
        json.dumps({"job": JOB, "events": ["{}"]}),
        json.dumps({"job": JOB, "events": [json.dumps(unknown)]}),
    ):
        mirrors._dirty.clear()
        mirrors.notified(payload)
    assert job.log.last_sequence == 2


def test_a_job_let_go_goes_on_for_the_streams_that_watch_it_beside_the_mirror() -> None:
    """A replica that follows a job (a mirror) and then holds it has two
    objects of it; when it lets the held one go, streams opened on that one
    meanwhile must go on receiving events too."""
    mirrors = Mirrors(Store())  # type: ignore[arg-type]
    mirror = mirrors.add(running_job(), fresh=True)
    held = running_job()
    watching = held.log.subscribe()
    assert mirrors.add(held) is mirror  # the mirror stays the one answered with
    mirrors._dirty.clear()
    mirrors.notified(news(step(3, 1)))
    assert [e.sequence for e in watching.drain()] == [3]
    assert mirror.log.last_sequence == 3


async def test_a_read_catches_up_every_object_of_a_job_from_the_oldest() -> None:
    store = Store([step(3, 1), step(4, 2), step(5, 3)])
    mirrors = Mirrors(store)  # type: ignore[arg-type]
    mirror = mirrors.add(running_job(), fresh=True)
    held = running_job()
    held.follow(None, [step(3, 1), step(4, 2)])  # it was ahead when let go
    mirrors.add(held)
    await mirrors.catch_up({JOB})
    assert store.asked == {JOB: 2}
    assert [e.sequence for e in mirror.log.events_after(2)] == [3, 4, 5]
    assert [e.sequence for e in held.log.events_after(2)] == [3, 4, 5]

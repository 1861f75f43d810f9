"""What replicas share in PostgreSQL, against a real server: backend leases,
the shared line's claims, and the fence on writes of jobs held elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from comfyui_grpc.backends.inventory import needs_of
from comfyui_grpc.cluster.shared_state import SharedState
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.model import JobKind, JobState
from comfyui_grpc.jobs.records import job_from_json
from comfyui_grpc.scheduler.shared_line import choose
from comfyui_grpc.state.errors import JobMovedAway
from comfyui_grpc.state.postgres import PostgresJobStore

LEASE = 1.0
GRAPH = {"1": {"class_type": "KSampler", "inputs": {"seed": 1}}}


def job(n: int, caller: str = "c") -> Job:
    spec = JobSpec(
        kind=JobKind.WORKFLOW,
        workflow=GRAPH,
        workflow_sha256="0" * 64,
        request_id="",
        labels={},
        front=False,
        retry_on_backend_loss=False,
        caller=caller,
        fingerprint=f"f{n}",
        source_field="workflow",
        field_map={},
    )
    return Job(f"00000000-0000-0000-0000-{n:012d}", spec)


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[list[SharedState]]:
    stores = [PostgresJobStore(postgres_url) for _ in range(2)]
    shared = []
    for n, store in enumerate(stores, start=1):
        await store.open()
        store.holder = f"replica-{n}"
        shared.append(SharedState(store, store.holder, LEASE))
        await shared[-1].start()
    try:
        yield shared
    finally:
        for store in stores:
            await store.close()


async def test_one_owner_per_backend_until_its_lease_lapses_or_is_released(
    replicas: list[SharedState],
) -> None:
    one, two = replicas
    assert await one.acquire("http://a") == []
    assert await two.acquire("http://a") is None
    assert (await one.renew(["http://a"])).held == {"http://a"}
    await one.release(["http://a"])
    assert (await one.renew(["http://a"])).held == frozenset()
    assert await two.acquire("http://a") == []
    # Not renewed: it lapses and the other replica takes it over.
    await asyncio.sleep(LEASE + 0.1)
    assert await one.acquire("http://a") == []
    assert (await two.renew(["http://a"])).held == frozenset()
    assert await one.owners() == {"http://a": "replica-1"}


async def test_a_taken_over_backend_brings_its_open_jobs_and_fences_the_old_holder(
    replicas: list[SharedState],
) -> None:
    one, two = replicas
    await one.acquire("http://a")
    j = job(1)
    await one.enqueue(j, needs_of(GRAPH))
    _, [held] = await one.claim(lambda rows: choose(rows, lambda _: True, 1))
    one.store.track(held)
    held.backend = "http://a"
    await one.store.save_now(held)
    await asyncio.sleep(LEASE + 0.1)
    taken = await two.acquire("http://a")
    assert taken is not None
    assert [t.job_id for t in taken] == [j.job_id]
    # The old holder may no longer write the job, nor hand it to ComfyUI.
    held.attempts += 1
    with pytest.raises(JobMovedAway):
        await one.store.save_now(held)
    # Nor add events to it: the new holder's followers would stream them.
    held.started()
    await one.store.flush()
    found = await two.news(j.job_id, 0)
    assert found is not None
    assert [e.state for e in found[1]] == [JobState.QUEUED]


async def test_concurrent_claims_never_hand_a_job_to_two_replicas(
    replicas: list[SharedState],
) -> None:
    one, two = replicas
    for n in range(60):
        await one.enqueue(job(n, caller=f"c{n % 3}"), needs_of(GRAPH))

    async def drain(shared: SharedState) -> list[str]:
        got: list[str] = []
        while True:
            _, jobs = await shared.claim(lambda rows: choose(rows, lambda _: True, 3))
            if not jobs:
                return got
            got += [j.job_id for j in jobs]

    first, second = await asyncio.gather(drain(one), drain(two))
    assert not set(first) & set(second)
    assert len(first) + len(second) == 60
    assert await one.waiting_by_caller() == {}


async def test_a_job_in_the_line_is_cancelled_once_and_never_claimed(
    replicas: list[SharedState],
) -> None:
    one, two = replicas
    j = job(7)
    await one.enqueue(j, needs_of(GRAPH))
    taken = await two.take_to_cancel(j.job_id)
    assert taken is not None
    assert await one.take_to_cancel(j.job_id) is None
    _, claimed = await one.claim(lambda rows: choose(rows, lambda _: True, 5))
    assert claimed == []


async def test_a_high_job_behind_many_takes_its_callers_next_turn(
    replicas: list[SharedState],
) -> None:
    one, _ = replicas
    for n in range(100):
        await one.enqueue(job(n, caller="bulk"), needs_of(GRAPH))
    await one.enqueue(job(500, caller="other"), needs_of(GRAPH))
    urgent = job(900, caller="bulk")
    urgent.spec = dataclasses.replace(urgent.spec, front=True)
    await one.enqueue(urgent, needs_of(GRAPH))
    _, claimed = await one.claim(lambda rows: choose(rows, lambda _: True, 2), window=8)
    # bulk's next turn goes to its high job; other keeps its own turn.
    assert [j.job_id for j in claimed] == [urgent.job_id, job(500).job_id]


async def test_deletes_owed_to_a_backend_outlive_the_replica_that_owed_them(
    replicas: list[SharedState],
) -> None:
    one, two = replicas
    await one.acquire("http://a")
    await one.owe("http://a", {"job-1", "job-2"})
    await one.owe("http://a", {"job-2", "job-3"})  # job-1's delete was made
    await asyncio.sleep(LEASE + 0.1)  # one stops renewing
    assert await two.acquire("http://a") == []
    assert await two.owed("http://a") == {"job-2", "job-3"}
    await two.owe("http://a", set())
    assert await one.owed("http://a") == set()


async def test_news_of_a_job_is_its_record_and_events_as_of_one_moment(
    replicas: list[SharedState],
) -> None:
    """A follower rebuilds a job from its record and events: read apart, the
    record could be older than the events (the holder committed between the
    two reads) and a job would hold its terminal event but not its end."""
    one, two = replicas
    j = job(3)
    await one.enqueue(j, needs_of(GRAPH))
    _, [held] = await one.claim(lambda rows: choose(rows, lambda _: True, 1))
    one.store.track(held)
    held.started()
    held.node_started("1")
    await one.store.save_now(held)
    done = asyncio.Event()

    async def write() -> None:
        for step in range(1, 301):
            held.attempts = step  # in the record only
            held.node_progress("1", step, 1000)  # in the events only
            await one.store.save_now(held)
        done.set()

    def last_step(events: list[ev.Event]) -> int:
        steps = [e.payload.value for e in events if isinstance(e.payload, ev.NodeProgressed)]
        return steps[-1] if steps else 0

    async def read() -> int:
        checked = 0
        while not done.is_set():
            for record, events in (await two.news_many({j.job_id: 0})).values():
                assert record.attempts == last_step(events)
            found = await two.news(j.job_id, 0)
            assert found is not None
            assert job_from_json(j.job_id, *found).attempts == last_step(found[1])
            checked += 1
        return checked

    _, checked = await asyncio.gather(write(), read())
    assert checked > 10

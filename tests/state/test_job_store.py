"""The job store contract, for SQLite and PostgreSQL alike: what is written
comes back, including the event log."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.log import RESTART_SEQUENCE_GAP
from comfyui_grpc.jobs.model import Artifact, JobFailure, JobKind, JobState, OutputFile
from comfyui_grpc.state import CallbackRecord, JobStore, NullJobStore, SqliteJobStore
from comfyui_grpc.workflows import TextToImageParams, text_to_image_graph

JOB_ID = "00000000-0000-4000-8000-0000000000aa"

StoreFactory = Callable[..., JobStore]
"""``make_store`` (conftest.py): a new store on the test's one database."""


def _job(job_id: str = JOB_ID, request_id: str = "req-1") -> Job:
    graph = text_to_image_graph(job_id, TextToImageParams(prompt="a cat", steps=3))
    spec = JobSpec(
        kind=JobKind.TEXT_TO_IMAGE,
        workflow=graph,
        workflow_sha256="abc",
        request_id=request_id,
        labels={"team": "a"},
        field_map={("1", "ckpt_name"): "text_to_image.checkpoint"},
    )
    return Job(job_id, spec)


def _finish(job: Job) -> None:
    job.started()
    job.nodes_cached(["1"])
    job.uploading({})
    job.succeeded()
    assert job.terminal


async def test_running_job_round_trips_with_its_events(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open()
    job = _job()
    store.track(job)
    await store.save_now(job)
    job.backend = "http://comfy:8188"
    job.queued(1, job.backend)
    job.started()
    job.nodes_cached(["1"])
    job.node_started("5")
    job.node_progress("5", 2, 3)
    await store.close()

    reopened = make_store()
    await reopened.open()
    (restored,) = await reopened.unfinished()
    assert restored.job_id == JOB_ID
    assert restored.state is JobState.RUNNING
    assert restored.backend == "http://comfy:8188"
    assert restored.spec.labels == {"team": "a"}
    assert restored.spec.field_map == {("1", "ckpt_name"): "text_to_image.checkpoint"}
    assert [type(e.payload) for e in restored.log] == [type(e.payload) for e in job.log]
    assert [e.payload for e in restored.log] == [e.payload for e in job.log]
    assert restored.progress.fraction == job.progress.fraction > 0
    # New events never reuse a sequence a client may have seen before the crash.
    assert restored.log.next_sequence() == job.log.last_sequence + RESTART_SEQUENCE_GAP + 1
    assert (await reopened.by_request("req-1")) is not None
    await reopened.close()


async def test_finished_job_is_not_unfinished_and_keeps_artifacts(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    await store.open()
    job = _job()
    store.track(job)
    job.started()
    job.uploading({"7": [OutputFile("7", "a.png", "x", "output")]})
    job.artifact_stored(
        Artifact(
            node_id="7",
            filename="a.png",
            key=f"{JOB_ID}/7/a.png",
            uri="file:///a.png",
            content_type="image/png",
            size_bytes=3,
            sha256="f" * 64,
        )
    )
    job.succeeded()
    await store.close()
    reopened = make_store()
    await reopened.open()
    assert await reopened.unfinished() == []
    loaded = await reopened.load(JOB_ID)
    assert loaded is not None
    assert loaded.state is JobState.SUCCEEDED
    assert loaded.artifacts == job.artifacts
    assert isinstance(list(loaded.log)[-1].payload, ev.Succeeded)
    assert loaded.log.ended
    await reopened.close()


async def test_forget_removes_a_job(job_store: JobStore) -> None:
    job = _job()
    job_store.track(job)
    await job_store.save_now(job)
    await job_store.forget(JOB_ID)
    assert await job_store.load(JOB_ID) is None
    assert await job_store.by_request("req-1") is None


async def test_reopening_keeps_every_job_and_every_event(make_store: StoreFactory) -> None:
    """Many jobs over several write-behind batches, then a restart: all of it comes back."""
    store = make_store(flush_interval_seconds=3600)  # only save_now, 500 events and close write
    await store.open()
    jobs = [_job(f"00000000-0000-4000-8000-{n:012x}", f"req-{n}") for n in range(40)]
    for n, job in enumerate(jobs):
        store.track(job)
        await store.save_now(job)
        job.queued(n, "")
        job.backend = "http://comfy:8188"
        job.started()
        for step in range(1, 20):
            job.node_progress("5", step, 20)
        if n % 2:
            _finish(job)
    await store.close()

    reopened = make_store()
    await reopened.open()
    try:
        unfinished = {job.job_id: job for job in await reopened.unfinished()}
        assert set(unfinished) == {job.job_id for job in jobs[::2]}
        for n, job in enumerate(jobs):
            loaded = await reopened.load(job.job_id)
            assert loaded is not None
            assert loaded.state is job.state
            assert [e.payload for e in loaded.log] == [e.payload for e in job.log]
            assert [e.sequence for e in loaded.log] == [e.sequence for e in job.log]
            found = await reopened.by_request(f"req-{n}")
            assert found is not None
            assert found.job_id == job.job_id
        assert await reopened.load("00000000-0000-4000-8000-ffffffffffff") is None
        assert await reopened.by_request("req-unknown") is None
    finally:
        await reopened.close()


async def test_finished_jobs_past_retention_are_dropped_at_open(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open()
    finished, running = _job(request_id="done"), _job(JOB_ID.replace("aa", "bb"), "running")
    for job in (finished, running):
        store.track(job)
        await store.save_now(job)
    _finish(finished)
    running.started()
    await store.close()

    kept = make_store(retention_seconds=3600)
    await kept.open()
    assert await kept.load(finished.job_id) is not None
    await kept.close()

    trimmed = make_store(retention_seconds=0)
    await trimmed.open()
    try:
        assert await trimmed.load(finished.job_id) is None
        assert await trimmed.by_request("done") is None
        (left,) = await trimmed.unfinished()
        assert left.job_id == running.job_id
        assert [e.payload for e in left.log] == [e.payload for e in running.log]
    finally:
        await trimmed.close()


async def test_close_waits_for_a_write_already_on_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the connection under a running write crashed the process on SIGTERM."""
    store = SqliteJobStore(tmp_path / "state.db", flush_interval_seconds=3600)
    await store.open()
    entered, release = threading.Event(), threading.Event()
    real_write = store._write

    def held_write(*args: list[tuple[object, ...]]) -> None:
        entered.set()
        release.wait(30)
        real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write", held_write)
    job = _job()
    store.track(job)
    job.started()
    job.failed(
        JobFailure(reason="EXECUTION_ERROR", message="stopped")
    )  # a terminal event flushes at once
    assert await asyncio.to_thread(entered.wait, 30)
    closing = asyncio.create_task(store.close())
    # Not a synchronisation: close must still be waiting when this times out.
    done, _ = await asyncio.wait({closing}, timeout=0.5)
    assert not done, "close() returned while a write was still running"
    release.set()
    await closing

    reopened = SqliteJobStore(tmp_path / "state.db")
    await reopened.open()
    loaded = await reopened.load(JOB_ID)
    assert loaded is not None
    assert loaded.state is JobState.FAILED
    await reopened.close()


async def test_callbacks_round_trip_and_open_ones_come_back(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open()
    first = CallbackRecord(job_id="a", delivery_id="d-a", url="https://h/x", updated=1.0)
    kept = await store.add_callback(first)
    assert kept == first
    # A second registration (a repeated request) keeps the first delivery id.
    again = await store.add_callback(replace(first, delivery_id="d-other"))
    assert again.delivery_id == "d-a"
    pending = replace(first, state="pending", attempts=2, last_error="answered 503",
                      due_time=5.0, next_attempt_time=9.0)  # fmt: skip
    await store.save_callback(pending)
    done = CallbackRecord(
        job_id="b", delivery_id="d-b", url="https://h/y", state="delivered", updated=time.time()
    )
    await store.save_callback(done)
    # Ended deliveries go with the retention of finished jobs; open ones never do.
    await store.save_callback(replace(done, job_id="old", updated=1.0))
    await store.close()

    reopened = make_store()
    await reopened.open()
    assert await reopened.open_callbacks() == [pending]
    assert await reopened.callback("b") == done
    assert await reopened.callback("old") is None
    await reopened.close()


async def test_a_store_from_before_callbacks_gains_the_table_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = SqliteJobStore(path)
    await store.open()
    job = _job()
    store.track(job)
    await store.save_now(job)
    await store.close()
    with sqlite3.connect(path) as db:  # as a gateway without callbacks left it
        db.execute("DROP TABLE callbacks")
    reopened = SqliteJobStore(path)
    await reopened.open()
    assert [j.job_id for j in await reopened.unfinished()] == [JOB_ID]
    await reopened.save_callback(CallbackRecord(job_id=JOB_ID, delivery_id="d", url="https://h"))
    assert (await reopened.callback(JOB_ID)) is not None
    await reopened.close()


async def test_the_null_store_keeps_callbacks_in_memory() -> None:
    store = NullJobStore()
    record = CallbackRecord(job_id="a", delivery_id="d", url="https://h")
    assert await store.add_callback(record) == record
    await store.save_callback(replace(record, state="pending"))
    assert [r.state for r in await store.open_callbacks()] == ["pending"]
    await store.save_callback(replace(record, state="failed"))
    assert await store.open_callbacks() == []
    assert (await store.callback("a")) == replace(record, state="failed")

"""The SQLite job store: what is written comes back, including the event log."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.log import RESTART_SEQUENCE_GAP
from comfyui_grpc.jobs.model import Artifact, JobFailure, JobKind, JobState, OutputFile
from comfyui_grpc.state import SqliteJobStore
from comfyui_grpc.workflows import TextToImageParams, text_to_image_graph

JOB_ID = "00000000-0000-4000-8000-0000000000aa"


def _job() -> Job:
    graph = text_to_image_graph(JOB_ID, TextToImageParams(prompt="a cat", steps=3))
    spec = JobSpec(
        kind=JobKind.TEXT_TO_IMAGE,
        workflow=graph,
        workflow_sha256="abc",
        request_id="req-1",
        labels={"team": "a"},
        field_map={("1", "ckpt_name"): "text_to_image.checkpoint"},
    )
    return Job(JOB_ID, spec)


async def test_running_job_round_trips_with_its_events(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "state.db")
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

    reopened = SqliteJobStore(tmp_path / "state.db")
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


async def test_finished_job_is_not_unfinished_and_keeps_artifacts(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "state.db")
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
    reopened = SqliteJobStore(tmp_path / "state.db")
    await reopened.open()
    assert await reopened.unfinished() == []
    loaded = await reopened.load(JOB_ID)
    assert loaded is not None
    assert loaded.state is JobState.SUCCEEDED
    assert loaded.artifacts == job.artifacts
    assert isinstance(list(loaded.log)[-1].payload, ev.Succeeded)
    assert loaded.log.ended
    await reopened.close()


async def test_forget_removes_a_job(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "state.db")
    await store.open()
    job = _job()
    store.track(job)
    await store.save_now(job)
    await store.forget(JOB_ID)
    assert await store.load(JOB_ID) is None
    await store.close()


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

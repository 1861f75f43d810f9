"""The gateway's headline guarantees, each held by a test that fails when the
code breaks it (``scripts/mutants.py`` applies those breaks and checks).

- an interrupt names its prompt and never stops another one;
- cancelling a job deletes only that job's prompt from ComfyUI's queue;
- an interrupt that lands on the next prompt (a race ComfyUI allows) does not
  fail that job: it is handed out again;
- a job is recorded, with its backend, before ComfyUI sees it;
- a ``request_id`` is found in the job store (SQLite or PostgreSQL) after a restart;
- a submission whose answer was lost is not submitted again;
- a graph ComfyUI only partly accepts (``200`` with ``node_errors``) is
  withdrawn: it never runs to the end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx
import pytest
import websockets
from comfyui_grpc.app import Gateway
from comfyui_grpc.comfyui.client import ComfyUIClient
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.state import JobStoreUnavailable
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from testkit import gateway_settings

from .helpers import serving, slow_workflow, small_image, until_event, workflow_request


async def _result(stub: pb_grpc.GenerationServiceStub, job_id: str) -> job_pb2.Job:
    response = await stub.GetResult(
        pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    return response.job


async def _post_prompt(simulator: Simulator, graph: dict[str, Any], prompt_id: str) -> None:
    """Another client's prompt, straight to ComfyUI."""
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": "someone-else"}
        response = await http.post("/prompt", json=body)
        assert response.status_code == 200, response.text


async def _history(simulator: Simulator, prompt_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        entry: dict[str, Any] = (await http.get(f"/history/{prompt_id}")).json()
        return entry


async def _queue(simulator: Simulator) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        queue: dict[str, Any] = (await http.get("/queue")).json()
        return queue


async def test_an_interrupt_stops_only_the_prompt_it_names(simulator: Simulator) -> None:
    ws_url = simulator.url.replace("http://", "ws://") + "/ws?clientId=someone-else"
    client = ComfyUIClient(simulator.url)
    try:
        async with websockets.connect(ws_url) as socket:
            await _post_prompt(simulator, slow_workflow(200, 0.01, "theirs"), "theirs")
            await _until_message(socket, "execution_start")
            await client.interrupt("ours-not-running")
            ending = await _until_message(socket, "execution_success", "execution_interrupted")
    finally:
        await client.aclose()
    assert ending == "execution_success"


async def _until_message(socket: Any, *kinds: str) -> str:
    async for frame in socket:
        if isinstance(frame, str):
            kind = json.loads(frame).get("type")
            if kind in kinds:
                return str(kind)
    raise AssertionError(f"the socket closed before {kinds}")


async def test_cancel_deletes_only_the_jobs_own_prompt(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url, backend_prefetch=2) as (_gw, stub):
        blocker = await stub.Generate(workflow_request(slow_workflow(100, 0.02, "block")))
        await until_event(stub, blocker.job_id, "started")
        first = await stub.Generate(workflow_request(slow_workflow(1, 0.0, "p1")))
        second = await stub.Generate(workflow_request(slow_workflow(1, 0.0, "p2")))
        await until_event(stub, second.job_id, "queued")
        await _post_prompt(simulator, slow_workflow(1, 0.0, "theirs"), "theirs")
        pending = {item[1] for item in (await _queue(simulator))["queue_pending"]}
        assert {first.job_id, second.job_id, "theirs"} <= pending

        cancelled = await stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id))
        assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
        pending = {item[1] for item in (await _queue(simulator))["queue_pending"]}
        assert pending == {second.job_id, "theirs"}
        await stub.CancelJob(pb.CancelJobRequest(job_id=blocker.job_id), timeout=15)
        assert (await _result(stub, second.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_an_interrupt_that_hits_the_next_prompt_hands_it_out_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url) as (_gw, stub):
        first = await stub.Generate(workflow_request(slow_workflow(100, 0.02, "a")))
        await until_event(stub, first.job_id, "started")
        victim = await stub.Generate(workflow_request(slow_workflow(100, 0.01, "b")))
        await stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id), timeout=15)
        await until_event(stub, victim.job_id, "node_progress")
        # The gateway's interrupt for the first job, landing late: ComfyUI's
        # interrupt flag stops whatever runs when it is read.
        async with httpx.AsyncClient(base_url=simulator.url) as http:
            await http.post("/interrupt")
        job = await _result(stub, victim.job_id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert simulator.submitted_prompt_ids.count(victim.job_id) == 2


async def test_a_job_is_recorded_with_its_backend_before_comfyui_sees_it(
    simulator: Simulator, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    gw = Gateway(gateway_settings(tmp_path, simulator.url, state_path=str(state)))
    await gw.start()
    seen: list[tuple[str, str]] = []
    try:
        assert await gw.wait_backends(10)
        backend = next(iter(gw.pool))
        submit = backend.client.submit

        async def recording_submit(workflow: dict[str, Any], **kwargs: Any) -> Any:
            with sqlite3.connect(state) as db:
                rows = db.execute(
                    "SELECT record FROM jobs WHERE job_id = ?", (kwargs["prompt_id"],)
                ).fetchall()
            assert rows, "ComfyUI was asked before the job was recorded"
            seen.append((kwargs["prompt_id"], rows[0][0]))
            return await submit(workflow, **kwargs)

        backend.client.submit = recording_submit  # type: ignore[method-assign]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job = await stub.Generate(small_image())
            assert (await _result(stub, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        await gw.stop(grace=0)
    assert [job_id for job_id, _ in seen] == [job.job_id]
    assert f'"backend":"{simulator.url}"' in seen[0][1]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_request_id_is_found_in_the_store_after_a_restart(
    simulator: Simulator, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    where = (
        {"state_path": str(tmp_path / "s.db")}
        if store == "sqlite"
        else {"state_url": request.getfixturevalue("postgres_url")}
    )
    settings = gateway_settings(tmp_path, simulator.url, **where)
    request = small_image(request_id="once-only")
    job_ids = []
    for _ in range(2):
        gw = Gateway(settings)
        await gw.start()
        try:
            assert await gw.wait_backends(10)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                stub = pb_grpc.GenerationServiceStub(channel)
                response = await stub.Generate(request)
                job_ids.append(response.job_id)
                assert (await _result(stub, response.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
        finally:
            await gw.stop(grace=0)
    assert job_ids[0] == job_ids[1]
    assert simulator.submitted_prompt_ids == [job_ids[0]]


async def test_a_submission_whose_answer_was_lost_is_not_sent_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        simulator.faults.lose_prompt_answers = 1
        client_id = next(iter(gw.pool)).client_id
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job = await stub.Generate(small_image())
            assert (await _result(stub, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        await gw.stop(grace=0)
    assert simulator.faults.lose_prompt_answers == 0
    assert simulator.submitted_prompt_ids == [job.job_id]
    assert simulator.submitted_client_ids == [client_id]


async def test_a_graph_comfyui_only_partly_accepts_is_withdrawn(
    simulator: Simulator, tmp_path: Path
) -> None:
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        checkpoint = simulator.checkpoints[0]
        graph = slow_workflow(50, 0.01, "valid")
        graph.update(
            {
                "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
                "11": {
                    "class_type": "EmptyLatentImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 1},
                },
                "12": {
                    "class_type": "VAEDecode",
                    "inputs": {"samples": ["11", 0], "vae": ["10", 2]},
                },
                "13": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["12", 0], "filename_prefix": "needs-model"},
                },
            }
        )
        # The gateway saw the checkpoint; ComfyUI lost it since, so it drops
        # that output and would run the rest.
        simulator.set_checkpoints([])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job = await stub.Generate(workflow_request(graph))
            failed = await _result(stub, job.job_id)
            assert failed.state == job_pb2.JOB_STATE_FAILED
            assert failed.error.reason == "VALIDATION_FAILED"
            assert "13.inputs" in failed.error.message or "10.inputs" in failed.error.message
            # The next prompt runs after it: by then it had ended, stopped.
            simulator.set_checkpoints([checkpoint])
            after = await stub.Generate(workflow_request(slow_workflow(1, 0.0, "after")))
            assert (await _result(stub, after.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        await gw.stop(grace=0)
    # Deleted if it was still waiting, interrupted if ComfyUI had started it:
    # never run to the end.
    entry = (await _history(simulator, job.job_id)).get(job.job_id)
    if entry is not None:
        events = [message[0] for message in entry["status"]["messages"]]
        assert "execution_interrupted" in events, events
        assert "execution_success" not in events, events
    assert job.job_id not in str(await _queue(simulator))


class _Watched(asyncio.Event):
    """An event that says when someone starts waiting on it."""

    def __init__(self, waiting: asyncio.Event) -> None:
        super().__init__()
        self._waiting = waiting

    async def wait(self) -> Literal[True]:
        self._waiting.set()
        return await super().wait()


async def test_a_duplicate_of_a_request_that_could_not_be_recorded_tries_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url) as (gw, stub):
        store = gw.service.job_store
        save_now = store.save_now
        first_save = asyncio.Event()
        release = asyncio.Event()

        async def failing_once(job: Any) -> None:
            if not first_save.is_set():
                first_save.set()
                await release.wait()
                raise JobStoreUnavailable("the job store is down (test)")
            await save_now(job)

        store.save_now = failing_once  # type: ignore[method-assign]
        request = small_image(request_id="same-request")
        first = asyncio.ensure_future(stub.Generate(request, timeout=10))
        await first_save.wait()
        job = gw.service.registry.by_request("same-request")
        assert job is not None
        duplicate_waits = asyncio.Event()
        job.recorded = _Watched(duplicate_waits)
        second = asyncio.ensure_future(stub.Generate(request, timeout=10))
        await duplicate_waits.wait()  # the duplicate waits for the first's record
        release.set()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await first
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        retried = await second
        assert not retried.deduplicated
        assert (await _result(stub, retried.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert simulator.submitted_prompt_ids == [retried.job_id]


async def test_a_job_the_store_could_not_record_at_hand_over_is_not_sent_and_runs_later(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url) as (gw, stub):
        store = gw.service.job_store
        save_now = store.save_now
        calls: list[str] = []

        async def failing_at_hand_over(job: Any) -> None:
            calls.append(job.backend)
            if len(calls) == 2:  # 1: at Generate; 2: before POST /prompt
                raise JobStoreUnavailable("the job store is down (test)")
            await save_now(job)

        store.save_now = failing_at_hand_over  # type: ignore[method-assign]
        job = await stub.Generate(small_image(), timeout=10)
        assert (await _result(stub, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert calls == ["", simulator.url, simulator.url]
    assert simulator.submitted_prompt_ids == [job.job_id]

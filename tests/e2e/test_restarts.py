"""The gateway as its own process: killed with SIGKILL and restarted, and
drained with SIGTERM."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.comfyui.messages import Executing
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from support.gateway_process import GatewayProcess
from testkit import gateway_settings

from .helpers import collect, event_kind, slow_workflow, until_event, workflow_request


async def test_sigkill_mid_job_then_restart_finishes_the_job_once(
    simulator: Simulator, tmp_path: Path
) -> None:
    first = GatewayProcess(simulator.url, tmp_path)
    await first.start()
    request = workflow_request(slow_workflow(60, 0.03), request_id="restart-1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job_id = (await stub.Generate(request, timeout=10)).job_id
            seen = (await until_event(stub, job_id, "node_progress")).sequence
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.kill()

    second = GatewayProcess(simulator.url, tmp_path)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            again = await stub.Generate(request, timeout=10)
            assert again.job_id == job_id
            assert again.deduplicated
            result = await stub.GetResult(
                pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
            )
            assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
            assert len(result.job.artifacts) == 1
            resumed = await collect(stub, job_id, after=seen)
            sequences = [e.sequence for e in resumed[1:]]
            assert sequences == sorted(set(sequences))
            assert all(s > seen for s in sequences)
            assert event_kind(resumed[-1]) == "succeeded"
    finally:
        second.signal(signal.SIGTERM)
        await second.wait()
    assert simulator.submitted_prompt_ids.count(job_id) == 1
    stored = sorted(p.name for p in (tmp_path / "artifacts" / job_id).rglob("*") if p.is_file())
    assert stored == sorted([result.job.artifacts[0].filename, "manifest.json"])


async def test_sigterm_drains_open_streams_then_exits_zero(
    simulator: Simulator, tmp_path: Path
) -> None:
    gateway = GatewayProcess(simulator.url, tmp_path)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job_id = (
                await stub.Generate(workflow_request(slow_workflow(40, 0.03)), timeout=10)
            ).job_id
            await until_event(stub, job_id, "node_progress")
            stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id))
            first = await stream.read()
            assert event_kind(first) == "snapshot"
            gateway.signal(signal.SIGTERM)
            await gateway.wait_for(re.compile("shutting down"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListJobs(pb.ListJobsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            rest = []
            while (event := await stream.read()) is not grpc.aio.EOF:
                rest.append(event)
            assert event_kind(rest[-1]) == "succeeded"
        code = await gateway.wait()
        assert code == 0, "".join(gateway.lines[-60:])
    finally:
        await gateway.kill()


async def test_a_socket_message_during_shutdown_is_ignored(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A job's last message can arrive after the job service closed; it used to
    raise out of the socket task and abort the rest of the shutdown."""
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job_id = (
                await stub.Generate(workflow_request(slow_workflow(400, 0.05)), timeout=10)
            ).job_id
            await until_event(stub, job_id, "started")
        await gw.service.close()
        (backend,) = gw.pool
        gw.service.tracker.on_message(backend, Executing(prompt_id=job_id, node=None))
        await gw.service.tracker.on_connect(backend, first=False)
        job = gw.service.registry.get(job_id)
        assert job is not None
        assert not job.terminal  # left for the next start to reconcile
    finally:
        await gw.stop(grace=0)

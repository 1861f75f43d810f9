"""A lone ComfyUI backend down for longer than the loss grace period.

With nowhere else to send them, waiting jobs stay QUEUED in the gateway's
line until it is back (a ComfyUI restart that loads models outlasts the
grace period); the job that was running fails BACKEND_LOST, and a cancel
while it is down is answered at once.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from testkit import gateway_settings

from .helpers import slow_workflow, until_event, workflow_request


async def _state(stub: pb_grpc.GenerationServiceStub, job_id: str) -> job_pb2.Job:
    return (await stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=10)).job


async def test_waiting_jobs_outlast_an_outage_of_the_only_backend(
    simulator: Simulator, tmp_path: Path
) -> None:
    settings = gateway_settings(tmp_path, simulator.url, backend_lost_after_seconds=0.3)
    gw = Gateway(settings)
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            running = await stub.Generate(
                workflow_request(slow_workflow(400, 0.05, "block")), timeout=10
            )
            await until_event(stub, running.job_id, "started")
            kept, cancelled = [
                (
                    await stub.Generate(
                        workflow_request(slow_workflow(2, 0.01, f"q{i}")), timeout=10
                    )
                ).job_id
                for i in range(2)
            ]

            await simulator.stop()
            lost = await stub.GetResult(
                pb.GetResultRequest(job_id=running.job_id, wait_timeout={"seconds": 30}),
                timeout=40,
            )
            assert lost.job.state == job_pb2.JOB_STATE_FAILED
            assert lost.job.error.reason == "BACKEND_LOST"
            # The prefetched one came back from the lost backend with it.
            for job_id in (kept, cancelled):
                job = await _state(stub, job_id)
                assert job.state == job_pb2.JOB_STATE_QUEUED
                assert job.backend == ""

            answer = await stub.CancelJob(pb.CancelJobRequest(job_id=cancelled), timeout=10)
            assert answer.job.state == job_pb2.JOB_STATE_CANCELLED

            await simulator.start(port=simulator.port)  # a restarted ComfyUI: empty queue
            result = await stub.GetResult(
                pb.GetResultRequest(job_id=kept, wait_timeout={"seconds": 60}), timeout=70
            )
            assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
            assert len(result.job.artifacts) == 1
            assert result.job.backend == simulator.url
            assert (await _state(stub, cancelled)).state == job_pb2.JOB_STATE_CANCELLED
        # Submitted again after the restart; the cancelled one, which waited
        # in the gateway's line, never reached ComfyUI.
        assert simulator.submitted_prompt_ids.count(kept) == 2
        assert simulator.submitted_prompt_ids.count(cancelled) == 0
    finally:
        await gw.stop(grace=0)

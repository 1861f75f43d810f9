"""The gateway process against a hostile ComfyUI: one fault after another on
the same backend, and after each a normal job must succeed.

Each fault is a shape of garbage or abuse from ComfyUI (malformed messages
of each type, malformed and huge answers, an endless output file, file
names that try to escape, a flood of node changes, oversized messages).
Throughout, the gateway must stay SERVING (readiness and liveness), keep
its RSS bounded, fail every affected job with a clear reason (or finish it
once ComfyUI behaves), count what it could not use, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.simulator import Faults, Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.gateway_process import GatewayProcess

MiB = 1024 * 1024
MAX_ANSWER = 4 * MiB
MAX_MESSAGE = 1 * MiB
MAX_OUTPUT = 8 * MiB
RSS_GROWTH_LIMIT_KIB = 128 * 1024
"""The huge answers are 512 MiB and the endless file has no end: read whole,
either would grow the gateway by far more than this."""


def _image(prompt: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        text_to_image=pb.TextToImage(prompt=prompt, width=64, height=64, steps=3, seed=7)
    )


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Callable[[Faults], None]
    kind: str = ""
    """The protocol-error kind the gateway must log (and count) for it."""
    outcome: str = "JOB_STATE_SUCCEEDED"
    """The affected job's end."""
    reason: str = ""
    clear_first: bool = True
    """Clear the fault before waiting for the affected job's end."""
    submits: bool = True


def _set(**values: object) -> Callable[[Faults], None]:
    def apply(faults: Faults) -> None:
        for key, value in values.items():
            setattr(faults, key, value)

    return apply


WS_TYPES = (
    "status",
    "execution_start",
    "execution_cached",
    "executing",
    "progress",
    "progress_state",
    "executed",
    "execution_success",
    "not_json",
)

FAULTS = [
    *(Fault(f"malformed {t}", _set(malformed_messages={t}), f"ws_{t}") for t in WS_TYPES),
    Fault(
        "malformed execution_error",
        _set(malformed_messages={"execution_error"}, fail_node_class="KSampler"),
        "ws_execution_error",
        outcome="JOB_STATE_FAILED",
        reason="EXECUTION_ERROR",
    ),
    Fault(
        "malformed /queue while the socket drops",
        _set(malformed_answers={"/queue"}, ws_drop_after_messages=3),
        "bad_queue",
    ),
    Fault("malformed /history", _set(malformed_answers={"/history"}), "bad_history"),
    # The job waits in the gateway's line while the backend's answers are
    # unusable, and runs once they are sane again.
    Fault("malformed /prompt", _set(malformed_answers={"/prompt"}), "bad_submit"),
    Fault(
        "huge /history",
        _set(huge_answer_paths={"/history"}, huge_answer_bytes=512 * MiB),
        "too_large",
    ),
    Fault(
        "endless /view",
        _set(endless_view=True),
        outcome="JOB_STATE_FAILED",
        reason="OUTPUT_TOO_LARGE",
        clear_first=False,
    ),
    Fault("hostile output names", _set(hostile_output_names=True), clear_first=False),
    Fault("node-change flood", _set(ws_flood_node_changes=5000), clear_first=False),
    Fault(
        "oversized messages",
        _set(ws_padding_bytes=2 * MiB),
        "ws_too_large",
        submits=False,
    ),
]


@pytest.fixture
async def hostile_simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    sim = Simulator(output_dir=tmp_path / "comfyui", step_seconds=0.01)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    checked = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(checked.status)


async def _until_serving(channel: grpc.aio.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=30
    )
    async for update in watch:
        if update.status == health_pb2.HealthCheckResponse.SERVING:
            watch.cancel()
            return
    raise AssertionError("the gateway never became SERVING")


async def _result(stub: pb_grpc.GenerationServiceStub, job_id: str) -> job_pb2.Job:
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
    )
    return result.job


async def _normal_job_succeeds(stub: pb_grpc.GenerationServiceStub, after: str) -> None:
    request = _image(f"a normal job after {after}")
    request.request_id = f"normal-after-{after}"
    # As a client would: UNAVAILABLE is retried (the gateway may notice a
    # socket fault just after health said SERVING, and reconnects at once).
    for attempt in range(50):
        try:
            response = await stub.Generate(request, timeout=10)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 49:
                raise
            await asyncio.sleep(0.2)
    job = await _result(stub, response.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, (after, job)
    events = stub.StreamProgress(pb.StreamProgressRequest(job_id=job.job_id, after_sequence=0))
    kinds = {event.WhichOneof("event") async for event in events}
    assert "node_progress" in kinds, f"after {after}, progress no longer arrives over the socket"


def _check_hostile_names(job: job_pb2.Job, artifacts: Path) -> None:
    assert job.artifacts, job
    for artifact in job.artifacts:
        assert artifact.key.startswith(f"{job.job_id}/"), artifact.key
        assert ".." not in artifact.key.split("/"), artifact.key
    root = artifacts.resolve()
    for path in artifacts.rglob("*"):
        assert path.resolve().is_relative_to(root), path


async def _through(
    fault: Fault,
    sim: Simulator,
    gateway: GatewayProcess,
    stub: pb_grpc.GenerationServiceStub,
    artifacts: Path,
) -> None:
    fault.apply(sim.faults)
    job_id = ""
    if fault.submits:
        job_id = (await stub.Generate(_image(fault.name), timeout=10)).job_id
    else:
        sim.broadcast_status()  # something for the socket to read
    if fault.kind:
        await gateway.wait_for(re.compile(rf"sent something unusable \({fault.kind}\)"), 60)
    if fault.clear_first:
        sim.faults = Faults()
    if job_id:
        job = await _result(stub, job_id)
        assert job_pb2.JobState.Name(job.state) == fault.outcome, (fault.name, job)
        if fault.reason:
            assert job.error.reason == fault.reason, (fault.name, job.error)
            assert job.error.message
        if fault.name == "hostile output names":
            _check_hostile_names(job, artifacts)
    sim.faults = Faults()


async def test_the_gateway_survives_a_hostile_comfyui(
    hostile_simulator: Simulator, tmp_path: Path
) -> None:
    sim = hostile_simulator
    gateway = GatewayProcess(
        sim.url,
        tmp_path,
        extra_args=[
            "--max-comfyui-answer-bytes",
            str(MAX_ANSWER),
            "--max-comfyui-message-bytes",
            str(MAX_MESSAGE),
            "--max-output-bytes",
            str(MAX_OUTPUT),
        ],
        log_path=tmp_path / "gateway.log",
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            await _until_serving(channel)
            await _normal_job_succeeds(stub, "start-up")
            baseline = gateway.rss_kib()
            for fault in FAULTS:
                await _through(fault, sim, gateway, stub, tmp_path / "artifacts")
                await _until_serving(channel)
                await _normal_job_succeeds(stub, fault.name)
                assert await _health(channel, "liveness") == health_pb2.HealthCheckResponse.SERVING
                grown = gateway.rss_kib() - baseline
                assert grown < RSS_GROWTH_LIMIT_KIB, f"RSS grew {grown} KiB after {fault.name}"
        crashed = [line for line in gateway.lines if "crashed" in line or "Traceback" in line]
        assert not crashed, "".join(crashed[:20])
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(30) == 0, "".join(gateway.lines[-50:])
    finally:
        await gateway.kill()

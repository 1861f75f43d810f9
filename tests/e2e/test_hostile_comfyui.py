"""A broken or hostile ComfyUI never takes the gateway down.

Malformed WebSocket messages cost one message, never the socket; malformed
or oversized answers are typed, counted errors; an endless output file
fails its job OUTPUT_TOO_LARGE with nothing partial stored; a socket task
that keeps crashing is restarted and, past its budget, fails liveness.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.backends.backend import Backend
from comfyui_grpc.comfyui import ComfyUIClient, ComfyUIProtocolError
from comfyui_grpc.comfyui.reporting import ProtocolErrors
from comfyui_grpc.comfyui.socket import ComfyUISocket
from comfyui_grpc.simulator import Faults, Simulator
from comfyui_grpc.tasks import RestartPolicy
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testkit import gateway_settings

from .helpers import collect, event_kind, small_image

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _finish(stub: pb_grpc.GenerationServiceStub, request: pb.GenerateRequest) -> job_pb2.Job:
    response = await stub.Generate(request, timeout=10)
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    return result.job


def _protocol_errors(gateway: Gateway, kind: str) -> float:
    backend = next(iter(gateway.pool))
    value = gateway.metrics.registry.get_sample_value(
        "comfyui_grpc_backend_protocol_errors_total", {"backend": backend.url, "kind": kind}
    )
    return value or 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a manifest's temporary file, renamed meanwhile
        return 0


async def _liveness(channel: grpc.aio.Channel) -> int:
    checked = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="liveness"), timeout=5
    )
    return int(checked.status)


WS_FAULTS = [
    ("status", "succeeded"),
    ("execution_start", "succeeded"),
    ("execution_cached", "succeeded"),
    ("executing", "succeeded"),
    ("progress", "succeeded"),
    ("progress_state", "succeeded"),
    ("executed", "succeeded"),
    ("execution_success", "succeeded"),
    ("execution_error", "failed"),
    ("not_json", "succeeded"),
]


@pytest.mark.parametrize(("kind", "outcome"), WS_FAULTS)
async def test_a_malformed_message_costs_one_message_not_the_backend(
    simulator: Simulator,
    gateway: Gateway,
    stub: pb_grpc.GenerationServiceStub,
    channel: grpc.aio.Channel,
    kind: str,
    outcome: str,
) -> None:
    simulator.faults.malformed_messages = {kind}
    if outcome == "failed":
        simulator.faults.fail_node_class = "KSampler"
    job = await _finish(stub, small_image())
    # The outcome comes from /history when the socket's message was garbage.
    assert job_pb2.JobState.Name(job.state) == f"JOB_STATE_{outcome.upper()}", job
    if outcome == "failed":
        assert job.error.reason == "EXECUTION_ERROR"
    assert _protocol_errors(gateway, f"ws_{kind}") >= 1
    simulator.faults = Faults()
    backend = next(iter(gateway.pool))
    again = await _finish(stub, small_image("after the fault"))
    assert again.state == job_pb2.JOB_STATE_SUCCEEDED
    # Step progress only ever arrives over the socket: it is alive and read.
    kinds = {event_kind(e) for e in await collect(stub, again.job_id, after=0)}
    assert "node_progress" in kinds
    assert backend.healthy
    assert await _liveness(channel) == SERVING


@pytest.mark.parametrize(
    ("path", "call"),
    [
        ("/queue", lambda c: c.queue()),
        ("/prompt", lambda c: c.queue_remaining()),
        ("/history", lambda c: c.history("abc")),
        ("/system_stats", lambda c: c.system_stats()),
        (
            "/prompt",
            lambda c: c.submit({}, prompt_id="p", client_id="c"),
        ),
        (
            "/upload/image",
            lambda c: c.upload_image(name="a.png", data=b"x", content_type="image/png"),
        ),
    ],
)
async def test_malformed_answers_are_typed_and_counted(
    simulator: Simulator, path: str, call: Any
) -> None:
    simulator.faults.malformed_answers = {path}
    counted: list[tuple[str, str]] = []
    client = ComfyUIClient(
        simulator.url, errors=ProtocolErrors(simulator.url, lambda b, k: counted.append((b, k)))
    )
    try:
        with pytest.raises(ComfyUIProtocolError) as raised:
            await call(client)
        assert raised.value.kind.startswith("bad_") or raised.value.kind == "invalid_json"
        assert counted == [(simulator.url, raised.value.kind)]
    finally:
        await client.aclose()


async def test_a_huge_answer_is_cut_off(simulator: Simulator) -> None:
    simulator.faults.huge_answer_paths = {"/queue"}
    simulator.faults.huge_answer_bytes = 8 * 1024 * 1024
    client = ComfyUIClient(simulator.url, max_answer_bytes=1024 * 1024)
    try:
        with pytest.raises(ComfyUIProtocolError, match="cut off") as raised:
            await client.queue()
        assert raised.value.kind == "too_large"
        simulator.faults.huge_answer_paths.clear()
        assert (await client.queue()).running == ()
    finally:
        await client.aclose()


@pytest.fixture
async def capped_gateway(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(
        gateway_settings(
            tmp_path,
            simulator.url,
            max_output_bytes=4 * 1024 * 1024,
            max_comfyui_message_bytes=64 * 1024,
        )
    )
    await gw.start()
    try:
        assert await gw.wait_backends(10.0)
        yield gw
    finally:
        await gw.stop(grace=1.0)


async def test_an_endless_output_fails_the_job_and_stores_nothing_of_it(
    simulator: Simulator, capped_gateway: Gateway, tmp_path: Path
) -> None:
    simulator.faults.endless_view = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{capped_gateway.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        job = await _finish(stub, small_image())
        assert job.state == job_pb2.JOB_STATE_FAILED
        assert job.error.reason == "OUTPUT_TOO_LARGE"
        assert "--max-output-bytes" in job.error.message
        # Only the failed job's manifest (and its metadata) may be there.
        stored = {p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()}
        assert stored <= {"manifest.json", "manifest.json.json"} or all(
            name.startswith(".tmp-") for name in stored - {"manifest.json", "manifest.json.json"}
        ), stored
        assert not [
            p for p in (tmp_path / "artifacts").rglob("*") if p.is_file() and _size(p) > 1 << 20
        ]
        simulator.faults.endless_view = False
        again = await _finish(stub, small_image("after the fault"))
        assert again.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_an_oversized_message_reopens_the_socket(
    simulator: Simulator, capped_gateway: Gateway
) -> None:
    backend = next(iter(capped_gateway.pool))
    reconnects = backend.socket.reconnects
    simulator.faults.ws_padding_bytes = 128 * 1024
    simulator.broadcast_status()
    await backend.socket.disconnected.wait()
    simulator.faults.ws_padding_bytes = 0
    assert await backend.wait_connected(10.0)
    assert backend.socket.reconnects > reconnects
    assert _protocol_errors(capped_gateway, "ws_too_large") >= 1


async def test_a_socket_task_that_keeps_crashing_fails_liveness(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: ComfyUISocket) -> None:
        raise RuntimeError("a bug in the socket task")

    monkeypatch.setattr(ComfyUISocket, "run", broken)
    monkeypatch.setattr(
        Backend,
        "restart_policy",
        RestartPolicy(initial_delay_seconds=0.01, max_delay_seconds=0.02, max_crashes=3),
    )
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=30
            )
            async for update in watch:
                if update.status == NOT_SERVING:
                    watch.cancel()
                    break
        crashes = gw.metrics.registry.get_sample_value(
            "comfyui_grpc_task_crashes_total",
            {"task": f"comfyui-socket {simulator.url}"},
        )
        assert crashes == 4
    finally:
        await gw.stop(grace=0)  # closing a given-up backend raises nothing

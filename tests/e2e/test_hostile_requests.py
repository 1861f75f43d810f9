"""Hostile requests cost the gateway little: a refused call is never read,
and an oversized workflow is refused before it is built.

Measured on the gateway in its own process (its RSS alone). The bounds are
on memory, with a generous time bound: they hold on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2
from support.gateway_process import GatewayProcess

from .helpers import field_violations

GENERATE = "/comfyui_grpc.v1.GenerationService/Generate"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
TOKEN = "hostile-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MIB = 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _many_nodes(count: int, inputs: int) -> bytes:
    """A GenerateRequest whose ``workflow`` Struct has ``count`` nodes, encoded
    as protobuf would, built from one node's bytes (building the Struct itself
    would take the test seconds)."""
    node = struct_pb2.Struct()
    node.update(
        {
            "000000": {
                "class_type": "KSampler",
                "inputs": {f"input_{j}": j for j in range(inputs)},
            }
        }
    )
    template = node.SerializeToString()
    at = template.index(b"000000")
    head, tail = template[:at], template[at + 6 :]
    struct = b"".join(head + b"%06d" % i + tail for i in range(count))
    return b"\x1a" + _varint(len(struct)) + struct  # GenerateRequest.workflow = 3


def _raw(value: bytes) -> bytes:
    return value


@pytest.fixture
async def gateway(simulator: Simulator, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    process = GatewayProcess(
        simulator.url, tmp_path, state=False, extra_args=["--auth-token-file", str(tokens)]
    )
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


def _channel(gateway: GatewayProcess) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{gateway.port}", options=[("grpc.max_send_message_length", 32 * 1024 * 1024)]
    )


async def test_unauthenticated_large_requests_are_refused_unread(
    gateway: GatewayProcess,
) -> None:
    payload = _many_nodes(100_000, 5)
    assert 13 * 1024 * 1024 < len(payload) < 16 * 1024 * 1024
    async with _channel(gateway) as channel:
        generate = channel.unary_unary(GENERATE, _raw, _raw)
        with pytest.raises(grpc.aio.AioRpcError) as warm_up:
            await generate(b"", timeout=10)
        assert warm_up.value.code() == grpc.StatusCode.UNAUTHENTICATED
        before = gateway.rss_kib()
        answers = await asyncio.gather(
            *(generate(payload, timeout=60) for _ in range(20)), return_exceptions=True
        )
        grown = gateway.rss_kib() - before
    codes = {a.code() if isinstance(a, grpc.aio.AioRpcError) else a for a in answers}
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}
    assert grown < 50 * MIB, f"RSS grew by {grown // MIB} MiB"


async def test_open_services_take_only_small_requests(gateway: GatewayProcess) -> None:
    async with _channel(gateway) as channel:
        check = channel.unary_unary(HEALTH_CHECK, _raw, _raw)
        huge = health_pb2.HealthCheckRequest(service="x" * (1024 * 1024)).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(huge, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most" in (info.value.details() or "")
        answer = await check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
        assert health_pb2.HealthCheckResponse.FromString(answer).status


async def _refused_quickly(
    gateway: GatewayProcess, payload: bytes, field: str
) -> grpc.aio.AioRpcError:
    async with _channel(gateway) as channel:
        generate = channel.unary_unary(GENERATE, _raw, _raw)
        small = pb.GenerateRequest(workflow_json="{}").SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError):
            await generate(small, metadata=AUTH, timeout=10)  # warm-up: an empty workflow
        before = gateway.rss_kib()
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(payload, metadata=AUTH, timeout=30)
        took = time.monotonic() - started
        grown = gateway.rss_kib() - before
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "at most 2000" in (error.details() or "")
    assert field in field_violations(error)
    assert took < 1.0, f"refusing took {took:.2f} s"
    assert grown < 100 * MIB, f"RSS grew by {grown // MIB} MiB"
    return error


async def test_a_100k_node_workflow_is_refused_before_it_is_built(
    gateway: GatewayProcess,
) -> None:
    await _refused_quickly(gateway, _many_nodes(100_000, 0), "workflow")


async def test_a_100k_node_workflow_json_is_refused_before_it_is_parsed(
    gateway: GatewayProcess,
) -> None:
    graph = {
        str(i): {"class_type": "KSampler", "inputs": {"seed": i, "model": ["1", 0]}}
        for i in range(100_000)
    }
    request = pb.GenerateRequest(workflow_json=json.dumps(graph))
    await _refused_quickly(gateway, request.SerializeToString(), "workflow_json")

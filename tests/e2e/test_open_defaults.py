"""Defaults that do not expose the API: ``dev`` binds loopback, ``serve``
refuses an open non-loopback address unless ``--insecure``, metrics bind
where gRPC binds, reflection can be switched off.

"Bound to 127.0.0.1 only" is observed from outside: 127.0.0.2 is loopback
too, so a socket bound to every address answers there and one bound to
127.0.0.1 refuses.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.gateway_process import GatewayProcess
from support.net import free_port
from testkit import gateway_settings

LISTENING = re.compile(r"gRPC server listening on \S+ \(port (\d+)")
OTHER_LOOPBACK = "127.0.0.2"


async def _answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _serve_exit(*args: str) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


@pytest.mark.parametrize("host", [[], ["--host", "0.0.0.0"], ["--host", "::"]])
async def test_serve_refuses_an_open_address_without_auth_or_tls(host: list[str]) -> None:
    code, lines = await _serve_exit(*host)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("comfyui-grpc serve: error: refusing to serve on")
    assert "--insecure" in lines[0]
    assert "--auth-token-file" in lines[0]


@pytest.mark.parametrize("how", ["insecure", "token", "loopback"])
async def test_serve_starts_when_open_on_purpose_or_protected(
    simulator: Simulator, tmp_path: Path, how: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t0k3n\n")
    extra = {
        "insecure": ["--host", "0.0.0.0", "--insecure"],
        "token": ["--host", "0.0.0.0", "--auth-token-file", str(tokens)],
        "loopback": [],  # GatewayProcess binds 127.0.0.1
    }[how]
    gateway = GatewayProcess(simulator.url, tmp_path, state=False, extra_args=extra)
    await gateway.start()
    try:
        assert await _answers(OTHER_LOOPBACK, gateway.port) == (how != "loopback")
    finally:
        await gateway.kill()


async def test_metrics_bind_where_grpc_binds(simulator: Simulator, tmp_path: Path) -> None:
    metrics = free_port()
    gateway = GatewayProcess(
        simulator.url, tmp_path, state=False, extra_args=["--metrics-port", str(metrics)]
    )
    await gateway.start()
    try:
        assert await _answers("127.0.0.1", metrics)
        assert not await _answers(OTHER_LOOPBACK, metrics)
    finally:
        await gateway.kill()


async def test_dev_binds_loopback_by_default(tmp_path: Path) -> None:
    metrics = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc",
        "dev",
        "--port",
        "0",
        "--metrics-port",
        str(metrics),
        "--simulator-port",
        str(free_port()),
        "--simulator-dir",
        str(tmp_path / "simulator"),
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        port = 0
        while not port:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "dev exited before it listened"
            if found := LISTENING.search(line):
                port = int(found.group(1))
        assert await _answers("127.0.0.1", port)
        assert not await _answers(OTHER_LOOPBACK, port)
        assert not await _answers(OTHER_LOOPBACK, metrics)
    finally:
        process.kill()
        await process.wait()


async def _reflection_answer(port: int) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        try:
            async for _ in stub.ServerReflectionInfo(ask(), timeout=5):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize("reflection", [True, False])
async def test_reflection_can_be_switched_off(
    simulator: Simulator, tmp_path: Path, reflection: bool
) -> None:
    gateway = Gateway(gateway_settings(tmp_path, simulator.url, reflection=reflection))
    await gateway.start()
    try:
        code = await _reflection_answer(gateway.port)
        assert code == (grpc.StatusCode.OK if reflection else grpc.StatusCode.UNIMPLEMENTED)
    finally:
        await gateway.stop(grace=0)

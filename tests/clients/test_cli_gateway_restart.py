"""The gateway going away, as the CLI shows it: `watch` says so in one line,
reconnects with after_sequence once a gateway is back on the port and
follows the job to its end; a command with no gateway to talk to gets one
readable line. No gRPC core log noise, no traceback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

from client_testkit import slow_workflow
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import AsyncClient, EventKind, workflow_request
from support.gateway_process import GatewayProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def env_for(port: int) -> dict[str, str]:
    env = dict(os.environ, COMFYUI_GRPC_TARGET=f"127.0.0.1:{port}")
    env.pop("COMFYUI_GRPC_TOKEN", None)
    return env


async def read_until(stream: asyncio.StreamReader, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        chunk = await asyncio.wait_for(stream.read(4096), 60)
        if not chunk:
            raise AssertionError(f"output ended before {needle!r}: {bytes(seen)!r}")
        seen.extend(chunk)


def assert_quiet(text: str) -> None:
    assert "Traceback" not in text, text
    assert ".cc:" not in text, text  # gRPC core log lines (chttp2_transport.cc, ...)


async def test_watch_rides_out_a_gateway_restart(simulator: Simulator, tmp_path: Path) -> None:
    port = free_port()
    args = ["--port", str(port), "--shutdown-grace", "1"]
    first = GatewayProcess(simulator.url, tmp_path, extra_args=args)
    await first.start()
    simulator.faults.step_seconds = 0.05
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        handle = await client.start(workflow_request(slow_workflow(160, 0.05)))
        async for update in handle.updates():
            if update.kind is EventKind.NODE_PROGRESS:
                break
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        "watch",
        handle.job_id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_for(port),
    )
    assert watch.stderr is not None
    seen = bytearray()
    second: GatewayProcess | None = None
    try:
        await read_until(watch.stderr, b"TestSlowProgress", seen)
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0
        await read_until(watch.stderr, b"lost the gateway", seen)
        second = GatewayProcess(simulator.url, tmp_path, extra_args=args)
        await second.start()
        await read_until(watch.stderr, b"reconnected", seen)
        out, rest = await asyncio.wait_for(watch.communicate(), 60)
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
        await first.kill()
        if second is not None:
            second.signal(signal.SIGTERM)
            await second.wait()
    err = (bytes(seen) + rest).decode()
    assert watch.returncode == 0, err
    assert out.decode().strip() == f"job {handle.job_id}: succeeded"
    assert err.count("lost the gateway") == 1, err
    percents = [int(m) for m in re.findall(r"^\s*(\d+)% ", err, re.MULTILINE)]
    assert percents == sorted(percents), err  # the job's fraction never goes back
    assert_quiet(err)
    assert "stopped; jobs left: 1: 1 (1 running) in ComfyUI; recorded in" in "".join(first.lines)


async def test_no_gateway_is_one_readable_line() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        "--timeout",
        "2",
        "jobs",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_for(port),
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    (line,) = err.decode().splitlines()
    assert line.startswith(f"comfyui-grpc: error: cannot reach the gateway at 127.0.0.1:{port} ")
    assert_quiet(err.decode())

"""The gateway owns its ports: a second gateway on a port already held gets
one line and exit code 2, for gRPC, metrics and the dev simulator alike."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator


async def second_gateway(*args: str, cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:  # it started after all: the test fails below
            process.terminate()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, (out + err).decode()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


async def test_a_second_gateway_on_the_grpc_port_exits_2_with_one_line(
    gateway: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    code, output = await second_gateway(
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(gateway.port),
        "--metrics-port",
        "-1",
        "--comfyui-url",
        simulator.url,
        "--shutdown-grace",
        "1",
        cwd=tmp_path,
    )
    assert code == 2, output
    assert "Traceback" not in output
    assert error_lines(output) == [
        f"comfyui-grpc serve: error: gRPC port {gateway.port} on 127.0.0.1 is already in use; "
        "stop the process holding it or choose another with --port"
    ]


async def test_a_taken_metrics_port_exits_2_with_one_line(
    gateway: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    assert gateway.metrics_server is not None
    metrics_port = gateway.metrics_server.port
    code, output = await second_gateway(
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--comfyui-url",
        simulator.url,
        cwd=tmp_path,
    )
    assert code == 2, output
    assert "Traceback" not in output
    (line,) = error_lines(output)
    assert f"metrics port {metrics_port} on 127.0.0.1 is already in use" in line
    assert "--metrics-port" in line


async def test_dev_with_a_taken_simulator_port_exits_2_with_one_line(
    simulator: Simulator, tmp_path: Path
) -> None:
    port = int(simulator.url.rsplit(":", 1)[1])
    code, output = await second_gateway(
        "dev",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--simulator-port",
        str(port),
        cwd=tmp_path,
    )
    assert code == 2, output
    assert "Traceback" not in output
    (line,) = error_lines(output)
    assert f"simulator port {port} on 127.0.0.1 is already in use" in line

"""Starting the processes under test: simulator, S3, gateway and the comparisons."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .common import (
    ACCESS_KEY,
    HOST,
    SECRET_KEY,
    Child,
    ChildFailed,
    Children,
    child_env,
    free_port,
    venv_script,
)

GATEWAY_PYTHONPATH: list[str] = []
"""Directories put before the installed ``comfyui_grpc`` in the gateway's
processes (``--gateway-pythonpath``), to measure a patched copy side by side."""


def gateway_env(base: dict[str, str]) -> dict[str, str]:
    if GATEWAY_PYTHONPATH:
        base = dict(base)
        base["PYTHONPATH"] = os.pathsep.join([*GATEWAY_PYTHONPATH, base.get("PYTHONPATH", "")])
    return base


@dataclass
class Sim:
    child: Child
    url: str
    stamps_url: str
    output_dir: Path


@dataclass
class Server:
    """A server under test: its process and where to reach it."""

    name: str
    child: Child
    target: str  # host:port for gRPC, base URL for HTTP


async def wait_log(child: Child, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        child.check()
        try:
            if needle in child.log_path.read_text(errors="replace"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ChildFailed(f"{child.name} never said {needle!r}:\n{child.log_tail()}")
        await asyncio.sleep(0.05)


async def wait_grpc_serving(child: Child, target: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            child.check()
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise ChildFailed(f"{child.name} never became SERVING:\n{child.log_tail()}")
            await asyncio.sleep(0.1)


async def start_simulator(children: Children, workdir: Path, tag: str = "sim") -> Sim:
    port, stamps_port = free_port(), free_port()
    output_dir = workdir / f"{tag}-output"
    output_dir.mkdir(parents=True, exist_ok=True)
    child = children.add(
        Child(
            tag,
            [
                sys.executable,
                "-m",
                "bench.stamped_sim",
                "--port",
                str(port),
                "--stamps-port",
                str(stamps_port),
                "--output-dir",
                str(output_dir),
                "--step-seconds",
                "0",
            ],
            workdir / "logs" / f"{tag}.log",
        )
    )
    await wait_log(child, "READY")
    return Sim(child, f"http://{HOST}:{port}", f"http://{HOST}:{stamps_port}", output_dir)


async def start_moto(children: Children, workdir: Path) -> str:
    port = free_port()
    child = children.add(
        Child(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            workdir / "logs" / "moto.log",
            env=child_env(drop_aws=True),
        )
    )
    await child.wait_port(port, timeout=60)
    return f"http://{HOST}:{port}"


def s3_env() -> dict[str, str]:
    return child_env(
        {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


async def start_gateway(
    children: Children,
    workdir: Path,
    comfyui_url: str,
    s3_endpoint: str,
    *,
    tag: str = "gateway",
    extra: list[str] | None = None,
) -> Server:
    script = venv_script("comfyui-grpc")
    if script is None:
        raise ChildFailed("the comfyui-grpc command is not installed (pip install -e '.[server]')")
    port = free_port()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    argv = [
        script,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--comfyui-url",
        comfyui_url,
        "--s3-endpoint-url",
        s3_endpoint,
        "--s3-bucket",
        bucket,
        "--s3-create-bucket",
        "--s3-path-style",
        "--log-level",
        "WARNING",
        "--shutdown-grace",
        "1",
        *(extra or []),
    ]
    env = gateway_env(s3_env())
    child = children.add(Child(tag, argv, workdir / "logs" / f"{tag}.log", env=env))
    target = f"{HOST}:{port}"
    await wait_grpc_serving(child, target)
    return Server("gateway", child, target)


async def start_floor(children: Children, workdir: Path, comfyui_url: str) -> Server:
    port = free_port()
    child = children.add(
        Child(
            "floor",
            [
                sys.executable,
                "-m",
                "bench.floor",
                "--port",
                str(port),
                "--comfyui-url",
                comfyui_url,
            ],
            workdir / "logs" / "floor.log",
        )
    )
    await wait_log(child, "READY")
    return Server("floor", child, f"{HOST}:{port}")


async def start_echo(children: Children, workdir: Path) -> Server:
    port = free_port()
    child = children.add(
        Child(
            "echo",
            [sys.executable, "-m", "bench.echo", "--port", str(port)],
            workdir / "logs" / "echo.log",
        )
    )
    await wait_log(child, "READY")
    return Server("echo", child, f"{HOST}:{port}")


async def _wait_http(child: Child, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            child.check()
            try:
                response = await client.get(url, timeout=1)
                if response.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ChildFailed(f"{child.name} did not answer {url}:\n{child.log_tail()}")
            await asyncio.sleep(0.1)


async def start_refproxy(children: Children, workdir: Path, comfyui_url: str) -> Server:
    port = free_port()
    child = children.add(
        Child(
            "refproxy",
            [
                sys.executable,
                "-m",
                "bench.refproxy",
                "--port",
                str(port),
                "--comfyui-url",
                comfyui_url,
            ],
            workdir / "logs" / "refproxy.log",
        )
    )
    base = f"http://{HOST}:{port}"
    await _wait_http(child, f"{base}/docs")
    return Server("refproxy", child, base)


def comfy_api_proxy_command() -> str | None:
    return venv_script("comfy-api-proxy")


async def start_comfy_api_proxy(children: Children, workdir: Path, comfyui_url: str) -> Server:
    script = comfy_api_proxy_command()
    if script is None:
        raise ChildFailed("comfy-api-proxy is not installed (pip install -e '.[bench]')")
    port = free_port()
    child = children.add(
        Child(
            "comfy-api-proxy",
            [script, "--comfyui", comfyui_url, "--host", HOST, "--port", str(port)],
            workdir / "logs" / "comfy-api-proxy.log",
        )
    )
    base = f"http://{HOST}:{port}"
    await _wait_http(child, f"{base}/api/v2/health")
    return Server("comfy-api-proxy", child, base)


async def post_json(client: httpx.AsyncClient, url: str, body: Any) -> Any:
    response = await client.post(url, json=body, timeout=30)
    response.raise_for_status()
    return response.json() if response.content else None

"""Credentials for ComfyUI: sent on every request and handshake, shown nowhere.

The simulator answers 401 without the expected ``Authorization`` header (as an
auth proxy in front of ComfyUI would), so a job that succeeds proves the
credentials went out on HTTP and on the WebSocket.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from support.gateway_process import GatewayProcess
from support.net import free_port
from testkit import gateway_settings

from .helpers import small_image

SECRET = "s3cr3t-Passw0rd"
USER = "operator"
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 100


async def _upload(stub: pb_grpc.GenerationServiceStub) -> pb.UploadInputResponse:
    async def parts() -> AsyncIterator[pb.UploadInputRequest]:
        yield pb.UploadInputRequest(metadata=pb.UploadInputMetadata(filename="in.png"))
        yield pb.UploadInputRequest(chunk=PNG)

    return await stub.UploadInput(parts(), timeout=10)


async def _generate(stub: pb_grpc.GenerationServiceStub) -> job_pb2.Job:
    job_id = (await stub.Generate(small_image(), timeout=10)).job_id
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
    )
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
    return result.job


async def test_credentials_in_a_comfyui_url_are_sent_but_never_shown(
    simulator: Simulator, tmp_path: Path
) -> None:
    basic = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    simulator.faults.required_authorization = f"Basic {basic}"
    url_with_credentials = simulator.url.replace("http://", f"http://{USER}:{SECRET}@")
    metrics_port = free_port()
    gateway = GatewayProcess(
        url_with_credentials,
        tmp_path,
        state=False,
        extra_args=["--metrics-port", str(metrics_port), "--log-level", "DEBUG"],
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job = await _generate(stub)
            assert job.backend == simulator.url
            uploaded = await _upload(stub)
            assert list(uploaded.backends) == [simulator.url]
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert f'backend="{simulator.url}"' in metrics
        manifest = (tmp_path / "artifacts" / job.job_id / "manifest.json").read_text()
        assert simulator.url in manifest
        await simulator.stop()  # the backend's loss is logged with its name
        await gateway.wait_for(re.compile(r"lost the socket to ComfyUI at"))
    finally:
        await gateway.kill()
    log = "".join(gateway.lines)
    assert "setting comfyui_urls" in log
    for shown in (metrics, manifest, log, str(job), str(uploaded)):
        assert SECRET not in shown
        assert f"{USER}:" not in shown


@pytest.mark.parametrize("source", ["token file", "header"])
async def test_comfyui_credentials_from_a_header_or_a_token_file(
    simulator: Simulator, tmp_path: Path, source: str
) -> None:
    simulator.faults.required_authorization = f"Bearer {SECRET}"
    token_file = tmp_path / "comfyui-token"
    token_file.write_text(f"{SECRET}\n")
    options: dict[str, object] = (
        {"comfyui_token_file": str(token_file)}
        if source == "token file"
        else {"comfyui_headers": (("Authorization", f"Bearer {SECRET}"),)}
    )
    gateway = Gateway(gateway_settings(tmp_path, simulator.url, **options))
    await gateway.start()
    try:
        assert await gateway.wait_backends(10.0), "the WebSocket handshake was refused"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            await _generate(stub)
            await _upload(stub)
    finally:
        await gateway.stop(grace=0)


async def test_without_credentials_the_backend_stays_down(
    simulator: Simulator, tmp_path: Path
) -> None:
    # The other tests' proof: the simulator does refuse a gateway sending nothing.
    simulator.faults.required_authorization = f"Bearer {SECRET}"
    gateway = Gateway(gateway_settings(tmp_path, simulator.url))
    await gateway.start()
    try:
        assert not await gateway.wait_backends(1.0)
    finally:
        await gateway.stop(grace=0)

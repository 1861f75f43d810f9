"""Outputs through the whole gateway into a real S3 server process (moto),
including an outage the store rides out and one it does not."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.storage import S3Settings, StorageSettings
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from support.s3 import ACCESS_KEY, SECRET_KEY, FaultProxy, MotoServer, sync_client
from testkit import gateway_settings

from .helpers import slow_workflow, small_image, until_event, workflow_request

BUCKET = "comfyui-outputs"
PREFIX = "prod"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def s3_settings(endpoint: str, **overrides: Any) -> StorageSettings:
    values: dict[str, Any] = {
        "bucket": BUCKET,
        "endpoint_url": endpoint,
        "prefix": PREFIX,
        "create_bucket": True,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    values.update(overrides)
    return StorageSettings(s3=S3Settings(**values))


@pytest.fixture
async def s3_gateway(
    simulator: Simulator, moto: str, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, pb_grpc.GenerationServiceStub]]:
    gw = Gateway(gateway_settings(tmp_path, simulator.url, storage=s3_settings(moto)))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            yield gw, pb_grpc.GenerationServiceStub(channel)
    finally:
        await gw.stop(grace=0)


def _object(endpoint: str, key: str) -> tuple[bytes, str]:
    client = sync_client(endpoint)
    response = client.get_object(Bucket=BUCKET, Key=key)
    return response["Body"].read(), response["ContentType"]


async def _finish(stub: pb_grpc.GenerationServiceStub, request: pb.GenerateRequest) -> job_pb2.Job:
    response = await stub.Generate(request, timeout=10)
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 60}), timeout=70
    )
    return result.job


async def test_images_and_a_video_land_in_s3_described_and_verified(
    s3_gateway: tuple[Gateway, pb_grpc.GenerationServiceStub], moto: str
) -> None:
    _, stub = s3_gateway
    image_job = await _finish(stub, small_image(batch_size=2, labels={"team": "art"}))
    video_job = await _finish(
        stub,
        pb.GenerateRequest(
            video=pb.Video(prompt="a boat", frames=8, fps=8, width=64, height=64, steps=2)
        ),
    )
    expected_types = {image_job.job_id: "image/png", video_job.job_id: "video/mp4"}
    for job in (image_job, video_job):
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
        for artifact in job.artifacts:
            assert artifact.key == f"{PREFIX}/{job.job_id}/{artifact.node_id}/{artifact.filename}"
            assert artifact.uri == f"s3://{BUCKET}/{artifact.key}"
            data, content_type = await asyncio.to_thread(_object, moto, artifact.key)
            assert content_type == expected_types[job.job_id] == artifact.content_type
            assert hashlib.sha256(data).hexdigest() == artifact.sha256
            assert len(data) == artifact.size_bytes
    assert len(image_job.artifacts) == 2
    manifest, _ = await asyncio.to_thread(
        _object, moto, f"{PREFIX}/{image_job.job_id}/manifest.json"
    )
    assert b'"team": "art"' in manifest
    for artifact in image_job.artifacts:
        assert artifact.sha256.encode() in manifest

    presigned = await stub.GetResult(
        pb.GetResultRequest(job_id=video_job.job_id, presign_ttl={"seconds": 300}), timeout=10
    )
    (artifact,) = presigned.job.artifacts
    assert artifact.presigned_url.startswith(moto)
    assert artifact.presigned_url_expire_time.seconds > 0
    async with httpx.AsyncClient() as client:
        downloaded = (await client.get(artifact.presigned_url)).content
    assert hashlib.sha256(downloaded).hexdigest() == artifact.sha256

    parts = [
        part
        async for part in stub.ReadArtifact(
            pb.ReadArtifactRequest(job_id=video_job.job_id, artifact=artifact.key, chunk_size=4096)
        )
    ]
    assert parts[0].artifact.key == artifact.key
    assert [p.offset for p in parts[1:]] == [4096 * i for i in range(len(parts) - 1)]
    assert b"".join(p.chunk for p in parts[1:]) == downloaded


class _RetrySeen(logging.Handler):
    """Sets an event when the store logs its first retry."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.seen = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if "storage retry" in record.getMessage():
            self._loop.call_soon_threadsafe(self.seen.set)


async def _proxied_gateway(
    simulator: Simulator, moto: str, tmp_path: Path, max_attempts: int
) -> tuple[Gateway, FaultProxy]:
    proxy = FaultProxy(int(moto.rsplit(":", 1)[1]))
    await proxy.start()
    storage = s3_settings(proxy.endpoint, max_attempts=max_attempts)
    gw = Gateway(gateway_settings(tmp_path, simulator.url, storage=storage))
    await gw.start()
    assert await gw.wait_backends(10)
    return gw, proxy


@pytest.mark.parametrize(("max_attempts", "recovers"), [(8, True), (2, False)])
async def test_store_outage_during_upload(
    simulator: Simulator, moto: str, tmp_path: Path, max_attempts: int, recovers: bool
) -> None:
    gw, proxy = await _proxied_gateway(simulator, moto, tmp_path, max_attempts)
    retries = _RetrySeen()
    logging.getLogger("comfyui_grpc.storage").addHandler(retries)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            # Cut the store as soon as ComfyUI finishes, before the first byte is stored.
            simulator_done = await stub.Generate(
                workflow_request(slow_workflow(3, 0.01, "outage")), timeout=10
            )
            job_id = simulator_done.job_id
            proxy.go_down()
            await until_event(stub, job_id, "uploading")
            await asyncio.wait_for(retries.seen.wait(), 30)
            if recovers:
                proxy.go_up()
            result = await stub.GetResult(
                pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
            )
            job = result.job
            if recovers:
                assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
                (artifact,) = job.artifacts
                data, _ = await asyncio.to_thread(_object, moto, artifact.key)
                assert hashlib.sha256(data).hexdigest() == artifact.sha256
            else:
                assert job.state == job_pb2.JOB_STATE_FAILED
                assert job.error.reason == "STORAGE_FAILED"
                assert "still in ComfyUI" in job.error.message
                assert not job.artifacts
                # Nothing is lost: the output is still served by ComfyUI.
                async with httpx.AsyncClient(base_url=simulator.url) as client:
                    history = (await client.get(f"/history/{job_id}")).json()[job_id]
                    (image,) = history["outputs"]["3"]["images"]
                    view = await client.get("/view", params=image)
                assert view.status_code == 200
                proxy.go_up()
    finally:
        logging.getLogger("comfyui_grpc.storage").removeHandler(retries)
        await gw.stop(grace=0)
        await proxy.close()

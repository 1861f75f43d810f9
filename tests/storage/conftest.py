"""Fixtures for the storage tests: a real moto S3 server process, a fault proxy, stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from aiobotocore.config import AioConfig
from comfyui_grpc.storage import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from storage_helpers import ACCESS_KEY, SECRET_KEY, FaultProxy, LogTrigger, s3_settings
from support.s3 import HttpTapProxy, MotoServer


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in its own process, answering on loopback."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
async def raw_s3(moto_endpoint: str) -> AsyncIterator[Any]:
    """A plain S3 client straight to moto, for looking behind the store's back."""
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    config = AioConfig(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with session.client("s3", endpoint_url=moto_endpoint, config=config) as client:
        yield client


@pytest.fixture(params=["s3", "local"])
async def store(
    request: pytest.FixtureRequest, moto_endpoint: str, tmp_path: Path
) -> AsyncIterator[ArtifactStore]:
    """Each implementation in turn, started, with prefix ``outputs``."""
    built: ArtifactStore
    if request.param == "s3":
        built = S3ArtifactStore(s3_settings(moto_endpoint))
    else:
        built = LocalArtifactStore(tmp_path / "artifacts", prefix="outputs")
    await built.start()
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[FaultProxy]:
    upstream_port = int(moto_endpoint.rsplit(":", 1)[1])
    fault_proxy = FaultProxy(upstream_port)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.close()


@pytest.fixture
async def tap(moto_endpoint: str) -> AsyncIterator[HttpTapProxy]:
    """An HTTP-aware proxy in front of moto that records and can rewrite requests."""
    tap_proxy = HttpTapProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    await tap_proxy.start()
    try:
        yield tap_proxy
    finally:
        await tap_proxy.close()


@pytest.fixture
def log_trigger() -> Iterator[Callable[..., LogTrigger]]:
    logger = logging.getLogger("comfyui_grpc.storage")
    installed: list[LogTrigger] = []

    def install(needle: str, action: Callable[[], None], times: int = 1) -> LogTrigger:
        trigger = LogTrigger(needle, action, times)
        logger.addHandler(trigger)
        installed.append(trigger)
        return trigger

    yield install
    for trigger in installed:
        logger.removeHandler(trigger)

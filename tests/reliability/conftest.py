"""Fixtures for the reliability suite: a moto S3 server and a fault proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from support.s3 import FaultProxy, MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def s3_proxy(moto_server: MotoServer) -> AsyncIterator[FaultProxy]:
    """A proxy to moto that a test can take down (outage windows)."""
    proxy = FaultProxy(moto_server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()

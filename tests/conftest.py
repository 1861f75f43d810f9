"""Shared fixtures: the ComfyUI simulator, the gateway and a client, all on
real loopback ports in the test's event loop."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from support.postgres import PostgresServer, postgres_bindir
from testkit import STRICT, gateway_settings

# The chaos run's fresh seed, chosen once per session and printed in the header.
CHAOS_RANDOM_SEED = int(
    os.environ.setdefault("COMFYUI_GRPC_CHAOS_RANDOM_SEED", str(int(time.time()) % 100_000))
)


def pytest_report_header() -> str:
    return f"chaos random seed: {CHAOS_RANDOM_SEED} (CHAOS_SEED={CHAOS_RANDOM_SEED} replays it)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run slow soak/load/chaos tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    sim = Simulator(output_dir=tmp_path / "comfyui", step_seconds=0.01)
    await sim.start(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def gateway(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10.0), "the gateway never connected to the simulator"
        yield gw
    finally:
        await gw.stop(grace=1.0)


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started on first use; each test
    takes a database of its own (``create_database``)."""
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL, password included, of a new empty database."""
    return postgres_server.url(postgres_server.create_database())

"""Fixtures for simulator tests: an HTTP session and a connected client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from comfyui_grpc.simulator import Simulator
from simclient import SimClient


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(simulator: Simulator, http: aiohttp.ClientSession) -> AsyncIterator[SimClient]:
    c = await SimClient(http, simulator.url).connect()
    try:
        yield c
    finally:
        await c.close()

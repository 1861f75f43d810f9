"""An unreachable or misconfigured ComfyUI is visible: each backend keeps its
last connection error as words, logs it at WARNING with the URL (once, not
per retry), ``serve`` reports every backend at start, and the UNAVAILABLE a
caller gets names the backends and carries RetryInfo."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from comfyui_grpc.api.status import to_status
from comfyui_grpc.backends import Backend
from comfyui_grpc.backends.diagnosis import (
    RETRY_MISCONFIGURED_SECONDS,
    RETRY_TRANSIENT_SECONDS,
    describe_unavailable,
    retry_delay_seconds,
)
from comfyui_grpc.errors import Unavailable
from comfyui_grpc.simulator import Simulator
from google.rpc import error_details_pb2, status_pb2
from support.gateway_process import GatewayProcess

Server = Callable[[], Awaitable[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def ignore(_: Backend, __: bool) -> None:
    return None


async def failing_backend(url: str, attempts: int = 3) -> Backend:
    """A started backend after ``attempts`` failed connection attempts."""
    backend = Backend(url, on_message=lambda b, m: None, on_connect=ignore)
    seen = asyncio.Event()
    count = 0
    failed = backend.socket._on_error
    assert failed is not None

    def counting(exc: BaseException) -> None:
        nonlocal count
        failed(exc)
        count += 1
        if count >= attempts:
            seen.set()

    backend.socket._on_error = counting
    backend.start()
    await asyncio.wait_for(seen.wait(), 30)
    return backend


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[[int], Awaitable[str]]]:
    """Plain HTTP servers that answer every path with a status: not ComfyUI."""
    runners: list[web.AppRunner] = []

    async def start(status: int) -> str:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=status, text="hello from some other service")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def garbage_server() -> AsyncIterator[str]:
    """A TCP service that does not speak HTTP."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_refused_is_named_logged_once_and_transient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="comfyui_grpc.backends"):
        backend = await failing_backend(url, attempts=3)
        try:
            assert backend.last_error == "connection refused"
            assert not backend.misconfigured
            assert not backend.healthy
        finally:
            await backend.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"cannot reach ComfyUI at {url}: connection refused; retrying"]


@pytest.mark.parametrize("status", [404, 200])
async def test_an_http_service_that_is_not_comfyui_is_called_that(
    http_server: Callable[[int], Awaitable[str]], status: int
) -> None:
    url = await http_server(status)
    backend = await failing_backend(url, attempts=1)
    try:
        assert backend.last_error == f"HTTP {status}: this is not ComfyUI (no WebSocket at /ws)"
        assert backend.misconfigured
    finally:
        await backend.close()


async def test_dns_tls_and_garbage_each_get_their_cause(
    http_server: Callable[[int], Awaitable[str]], garbage_server: str
) -> None:
    plain = await http_server(404)
    expected = {
        "http://no-such-comfyui.invalid:8188": "DNS lookup failed",
        plain.replace("http://", "https://"): "TLS: ",
        garbage_server: "this is not ComfyUI (the answer is not HTTP/WebSocket)",
    }
    for url, cause in expected.items():
        backend = await failing_backend(url, attempts=1)
        try:
            assert backend.last_error.startswith(cause), (url, backend.last_error)
            assert backend.misconfigured, url
        finally:
            await backend.close()


async def test_unavailable_names_every_backend_and_carries_retry_info(
    http_server: Callable[[int], Awaitable[str]],
) -> None:
    refused = await failing_backend(f"http://127.0.0.1:{free_port()}", attempts=1)
    wrong = await failing_backend(await http_server(404), attempts=1)
    try:
        both = describe_unavailable([refused, wrong])
        assert f"{refused.url} (connection refused, for " in both
        assert f"{wrong.url} (HTTP 404: this is not ComfyUI" in both
        assert both.endswith("retry shortly (ComfyUI may be starting or restarting)")
        assert retry_delay_seconds([refused, wrong]) == RETRY_TRANSIENT_SECONDS

        only_wrong = describe_unavailable([wrong])
        assert only_wrong.endswith("check the gateway's --comfyui-url: retrying will not help")
        assert retry_delay_seconds([wrong]) == RETRY_MISCONFIGURED_SECONDS
    finally:
        await refused.close()
        await wrong.close()

    status = to_status(Unavailable(both, reason="NO_BACKEND", retry_after_seconds=5.0))
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    parsed = status_pb2.Status.FromString(details)
    infos = [d for d in parsed.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    (packed,) = infos
    info = error_details_pb2.RetryInfo()
    packed.Unpack(info)
    assert info.retry_delay.seconds == 5


async def test_serve_reports_every_backend_at_start_and_stops_quietly(
    simulator: Simulator, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = GatewayProcess([simulator.url, dead], tmp_path, state=False)
    await gateway.start()
    try:
        await gateway.wait_for(re.compile(r"1 of 2 ComfyUI backend\(s\) reachable at start"))
        text = "".join(gateway.lines)
        assert f"ComfyUI at {simulator.url}: connected (ComfyUI " in text
        assert re.search(
            rf"WARNING .*ComfyUI at {re.escape(dead)}: unreachable \(connection refused\)", text
        ), text
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait() == 0
    finally:
        await gateway.kill()
    text = "".join(gateway.lines)
    assert "lost the socket" not in text
    assert re.search(r"INFO .*stopped; jobs left: 0", text), text

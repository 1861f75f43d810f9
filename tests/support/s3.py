"""S3 for tests: a moto server process, fault-injecting proxies, a plain client.

Everything listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .net import free_port

ACCESS_KEY = "comfyui-grpc-test"
SECRET_KEY = "comfyui-grpc-test-secret"
REGION = "us-east-1"


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 in its own process, logging to a file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start listening") from None
                time.sleep(0.05)  # readiness polling of a separate process

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env() -> dict[str, str]:
    """The environment a gateway process needs to sign requests to moto."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


def sync_client(endpoint: str) -> Any:
    """A plain boto3 S3 client straight to ``endpoint`` (use it from a thread)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def bucket_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object in ``bucket``, key -> bytes (for small test objects). Blocking."""
    client = sync_client(endpoint)
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


class FaultProxy:
    """A TCP proxy in front of an S3 server that can cut the network like a real outage.

    ``go_down`` resets every open connection and refuses new ones until
    ``go_up``; ``break_after`` lets a number of bytes through to the client
    and then resets the connections (a stream broken off mid-way).
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.up = True
        self.refused = 0
        self._budget: int | None = None
        self.endpoint = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"

    def go_down(self) -> None:
        self.up = False
        self._reset_all()

    def go_up(self) -> None:
        self.up = True

    def break_after(self, nbytes: int) -> None:
        self._budget = nbytes

    def _reset_all(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        task = asyncio.ensure_future(self._link(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._upstream(reader, up_writer, writer),
                self._pipe(up_reader, writer, downstream=True),
            )
        finally:
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _upstream(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Carries the client's bytes to the server (``writer`` is the client's side)."""
        await self._pipe(reader, up_writer, downstream=False)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(64 * 1024):
                if downstream and self._budget is not None:
                    if len(data) > self._budget:
                        writer.write(data[: self._budget])
                        await writer.drain()
                        self._budget = None
                        self._reset_all()
                        return
                    self._budget -= len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def close(self) -> None:
        self._reset_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP/1.1 request as the client sent it, body de-chunked."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def encode(self) -> bytes:
        """The request on the wire: ``Content-Length`` fitted to ``body``, no ``Expect``."""
        framing = {"content-length", "transfer-encoding"}
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [
            f"{key}: {value}"
            for key, value in self.headers
            if key.lower() not in framing and key.lower() != "expect"
        ]
        if self.body or any(key.lower() in framing for key, _ in self.headers):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Rewrite = Callable[[HttpRequest], HttpRequest]


class HttpTapProxy(FaultProxy):
    """A :class:`FaultProxy` that reads the client's HTTP requests one by one.

    Every request is kept in ``requests`` as the client sent it (to check
    what a client puts on the wire), then passed through ``rewrite`` (to
    make the server see something else) before it goes on. An
    ``Expect: 100-continue`` is answered here, because the whole body is
    read before the request is forwarded. Answers pass through untouched.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.requests: list[HttpRequest] = []
        self.rewrite: Rewrite | None = None

    async def _upstream(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while request := await self._read_request(reader, writer):
                self.requests.append(request)
                if self.rewrite is not None:
                    request = self.rewrite(request)
                up_writer.write(request.encode())
                await up_writer.drain()
            if up_writer.can_write_eof():
                up_writer.write_eof()

    @staticmethod
    async def _read_request(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> HttpRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None  # the client closed between requests
        request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _version = request_line.split(" ", 2)
        headers = tuple(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in header_lines)
        )
        request = HttpRequest(method, target, headers, b"")
        if (request.header("Expect") or "").lower() == "100-continue":
            # No pipe writes to the client now: the server has nothing to answer yet.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if "chunked" in (request.header("Transfer-Encoding") or "").lower():
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(request.header("Content-Length") or 0))
        return replace(request, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass  # trailers
    return bytes(body)

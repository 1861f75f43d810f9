"""Helpers for the storage tests: settings for moto, a fault-injecting proxy, log triggers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from comfyui_grpc.storage import S3Settings

MiB = 1024 * 1024
ACCESS_KEY = "comfyui-grpc-test"
SECRET_KEY = "comfyui-grpc-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def s3_settings(endpoint: str, **overrides: Any) -> S3Settings:
    """Settings for a fresh bucket, with small parts and quick back-off for tests."""
    base = S3Settings(
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        endpoint_url=endpoint,
        prefix="outputs",
        create_bucket=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        multipart_threshold_bytes=5 * MiB,
        part_size_bytes=5 * MiB,
        max_attempts=4,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        connect_timeout_seconds=5,
        read_timeout_seconds=20,
    )
    return replace(base, **overrides)


async def open_uploads(raw_s3: Any, bucket: str) -> list[dict[str, Any]]:
    response = await raw_s3.list_multipart_uploads(Bucket=bucket)
    uploads: list[dict[str, Any]] = response.get("Uploads", [])
    return uploads


class FaultProxy:
    """A TCP proxy in front of moto that can cut the network like a real outage.

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
                self._pipe(reader, up_writer, downstream=False),
                self._pipe(up_reader, writer, downstream=True),
            )
        finally:
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

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


class LogTrigger(logging.Handler):
    """Runs ``action`` once the ``times``-th storage log line containing ``needle`` is emitted.

    Retries log a warning before each back-off, so this lets a test react to
    the store's own progress instead of guessing with sleeps.
    """

    def __init__(self, needle: str, action: Callable[[], None], times: int = 1) -> None:
        super().__init__(level=logging.WARNING)
        self.needle = needle
        self.action = action
        self.times = times
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen += 1
            if self.seen == self.times:
                self.action()

"""One ComfyUI server as the gateway sees it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from ..comfyui.client import ComfyUIClient
from ..comfyui.messages import Message
from ..comfyui.socket import ComfyUISocket
from ..tasks import within
from .diagnosis import RateLimit, cause_of

log = logging.getLogger(__name__)

MessageHandler = Callable[["Backend", Message], None]
ConnectHandler = Callable[["Backend", bool], Awaitable[None]]


class Backend:
    """A ComfyUI base URL with its pooled client, socket and load count.

    ``healthy`` follows the socket: a backend we cannot hold a socket to gets
    no new jobs.
    """

    def __init__(
        self,
        url: str,
        *,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        on_disconnect: Callable[[Backend], None] | None = None,
        client_id: str | None = None,
        deaf_after_seconds: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id or f"comfyui-grpc-{uuid.uuid4().hex}"
        self.client = ComfyUIClient(self.url)
        self.outstanding: set[str] = set()
        # Jobs waiting in this backend's queue; may hold stale ids until the
        # next position update prunes them.
        self.waiting: set[str] = set()
        self._on_disconnect_cb = on_disconnect
        self._on_connect_cb = on_connect
        self.socket = ComfyUISocket(
            self.url,
            self.client_id,
            on_message=lambda message: on_message(self, message),
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            on_error=self._failed,
            deaf_after_seconds=deaf_after_seconds,
        )
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_error = ""
        """Why the last connection attempt failed, e.g. "connection refused"; "" once connected."""
        self.misconfigured = False
        """True when ``last_error`` is one retrying will not fix (DNS, TLS, not ComfyUI)."""
        self.down_since: float | None = time.monotonic()
        """``time.monotonic()`` since when the socket has been down; None while connected."""
        self.attempted = asyncio.Event()
        """Set once the first connection attempt has succeeded or failed."""
        self._log_limit = RateLimit()

    def __repr__(self) -> str:
        return f"Backend({self.url!r})"

    @property
    def healthy(self) -> bool:
        return self.socket.connected.is_set()

    async def _connected(self, first: bool) -> None:
        if self.last_error:
            log.info(
                "connected to ComfyUI at %s (was: %s)",
                self.url,
                self.last_error,
                extra={"backend": self.url},
            )
        self.last_error, self.misconfigured, self.down_since = "", False, None
        self._log_limit.reset()
        self.attempted.set()
        await self._on_connect_cb(self, first)

    def _failed(self, exc: BaseException) -> None:
        """A connection attempt failed or an open socket broke."""
        if self._closing:
            return
        cause = cause_of(exc)
        self.last_error, self.misconfigured = cause.text, cause.misconfigured
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.attempted.set()
        if self._log_limit.allow(cause.text):
            advice = "check --comfyui-url" if cause.misconfigured else "retrying"
            log.warning(
                "cannot reach ComfyUI at %s: %s; %s",
                self.url,
                cause.text,
                advice,
                extra={"backend": self.url},
            )

    def _disconnected(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        if self._closing:  # we closed it ourselves: nothing went wrong
            log.debug("closed the socket to ComfyUI at %s", self.url)
        else:
            log.warning(
                "lost the socket to ComfyUI at %s; reconnecting",
                self.url,
                extra={"backend": self.url},
            )
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(self)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.socket.run(), name=f"comfyui-socket {self.url}")

    async def wait_connected(self, timeout: float) -> bool:
        return await within(self.socket.connected.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()

"""One ComfyUI server as the gateway sees it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from ..comfyui.client import ComfyUIClient
from ..comfyui.messages import Message
from ..comfyui.socket import ComfyUISocket
from ..tasks import within
from .inventory import Inventory

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
        self.inventory: Inventory | None = None
        """What it can run, from ``/object_info`` (the last one read)."""
        self._on_disconnect_cb = on_disconnect
        self.socket = ComfyUISocket(
            self.url,
            self.client_id,
            on_message=lambda message: on_message(self, message),
            on_connect=lambda first: on_connect(self, first),
            on_disconnect=self._disconnected,
            deaf_after_seconds=deaf_after_seconds,
        )
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Backend({self.url!r})"

    @property
    def healthy(self) -> bool:
        return self.socket.connected.is_set()

    def _disconnected(self) -> None:
        log.warning("lost the socket to ComfyUI at %s", self.url, extra={"backend": self.url})
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(self)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.socket.run(), name=f"comfyui-socket {self.url}")

    async def wait_connected(self, timeout: float) -> bool:
        return await within(self.socket.connected.wait(), timeout)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()

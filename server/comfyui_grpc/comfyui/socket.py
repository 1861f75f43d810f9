"""The gateway's one WebSocket to a ComfyUI backend.

ComfyUI routes a prompt's messages to the socket registered under the
prompt's ``client_id`` at that instant and replays nothing, so:

- the client id is stable for the backend's lifetime (prompts submitted
  before a reconnect still reach us after it);
- a new connection is opened only after the old one is closed and awaited
  (a second socket with the same id would make ComfyUI route to nobody);
- every (re)connect is reported, so the caller can reconcile open jobs
  against ``/history`` and ``/queue``;
- a socket that stays silent after we expected a ``status`` broadcast is
  treated as deaf and reopened.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from . import messages
from .messages import Message

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def ws_url(base_url: str, client_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, f"clientId={client_id}", ""))


class ComfyUISocket:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        on_message: Callable[[Message], None],
        on_connect: Callable[[bool], Awaitable[None]],
        on_disconnect: Callable[[], None],
        on_error: Callable[[BaseException], None] | None = None,
        backoff_initial_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        deaf_after_seconds: float = 10.0,
    ) -> None:
        self.url = ws_url(base_url, client_id)
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._deaf_after = deaf_after_seconds
        self._expect_deadline: float | None = None
        self._connection: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def expect_traffic(self) -> None:
        """Note that ComfyUI must broadcast soon (we just changed its queue)."""
        deadline = asyncio.get_running_loop().time() + self._deaf_after
        if self._expect_deadline is None or deadline < self._expect_deadline:
            self._expect_deadline = deadline

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled."""
        delay = self._backoff_initial
        first = True
        while True:
            try:
                async with websockets.connect(
                    self.url,
                    compression=None,
                    max_size=MAX_MESSAGE_BYTES,
                    open_timeout=5,
                    # ComfyUI sends no pings; ours detect a dead peer. The
                    # timeout is generous: a needless reconnect risks the
                    # "second socket with one client id" trap.
                    ping_interval=20,
                    ping_timeout=60,
                    close_timeout=2,
                    user_agent_header="comfyui-grpc",
                ) as connection:
                    self._connection = connection
                    self._expect_deadline = None
                    self.connected.set()
                    if not first:
                        self.reconnects += 1
                    await self._on_connect(first)
                    first = False
                    delay = self._backoff_initial
                    await self._read(connection)
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.debug("ComfyUI socket %s: %r", self.url, exc)
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                self._connection = None
                if self.connected.is_set():
                    self.connected.clear()
                    self._on_disconnect()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff_max)

    async def _read(self, connection: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if self._expect_deadline is not None:
                timeout = max(0.0, self._expect_deadline - loop.time())
            try:
                # asyncio.timeout, not wait_for: a cancel must always stop this loop.
                async with asyncio.timeout(timeout):
                    frame = await connection.recv()
            except TimeoutError:
                log.warning("ComfyUI socket %s went silent; reconnecting", self.url)
                return
            self._expect_deadline = None
            if isinstance(frame, bytes):
                continue
            message = messages.parse(frame)
            if message is not None:
                self._on_message(message)

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
  treated as deaf and reopened;
- the first frame on every connection asks for preview metadata
  (``feature_flags``); binary preview frames of either format are read by
  :mod:`.previews`, attributed to their prompt and delivered as
  :class:`~.messages.Preview`;
- nothing ComfyUI sends is trusted: a frame of the wrong shape, or one the
  message handler chokes on, is reported and skipped, and a frame larger
  than ``max_message_bytes`` closes the connection (1009) and is reported;
  the socket then reconnects as after any drop.

``run`` still lets an unexpected exception out (a bug in a callback); the
backend runs it under :func:`~comfyui_grpc.tasks.supervise`, which restarts
it. The "first connect" flag lives on the object so a restart does not
report a first connect twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from ..redact import redact_url
from . import messages
from .messages import FeatureFlags, MalformedMessage, Message
from .previews import FEATURE_FLAGS, PreviewAttribution, read_frame
from .reporting import ProtocolErrors

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default cap on one WebSocket frame (``--max-comfyui-message-bytes``)."""
MESSAGE_TOO_BIG = 1009


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
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        errors: ProtocolErrors | None = None,
    ) -> None:
        # Logged without user-info; the handshake sends the full URL and headers.
        self._target = (ws_url(base_url, client_id), dict(headers or {}))
        self.url = redact_url(self._target[0])
        self._max_message_bytes = max_message_bytes
        self.errors = errors or ProtocolErrors(redact_url(base_url))
        self._first = True
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
        self.disconnected = asyncio.Event()
        """Set while there is no connection (the complement of ``connected``)."""
        self.disconnected.set()
        self.reconnects = 0
        self._previews = PreviewAttribution()
        self.preview_metadata = False
        """Whether ComfyUI said it sends previews with metadata (type 4) on this connection."""

    def expect_traffic(self) -> None:
        """Note that ComfyUI must broadcast soon (we just changed its queue)."""
        deadline = asyncio.get_running_loop().time() + self._deaf_after
        if self._expect_deadline is None or deadline < self._expect_deadline:
            self._expect_deadline = deadline

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled."""
        delay = self._backoff_initial
        while True:
            try:
                async with websockets.connect(
                    self._target[0],
                    additional_headers=self._target[1],
                    compression=None,
                    max_size=self._max_message_bytes,
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
                    self._previews.connected()
                    self.preview_metadata = False
                    # Must be the first frame: ComfyUI reads feature flags only then.
                    await connection.send(FEATURE_FLAGS)
                    self.connected.set()
                    self.disconnected.clear()
                    first, self._first = self._first, False
                    if not first:
                        self.reconnects += 1
                    await self._on_connect(first)
                    delay = self._backoff_initial
                    await self._read(connection)
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                self._note_closed(exc)
                log.debug("ComfyUI socket %s: %r", self.url, exc)
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                self._connection = None
                self.disconnected.set()
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
                self._handle_binary(frame)
            else:
                self._handle(frame)

    def _handle(self, frame: str) -> None:
        """Parse and deliver one text frame; a bad one is reported, never raised."""
        try:
            message = messages.parse(frame)
        except MalformedMessage as exc:
            self.errors.report(f"ws_{exc.kind}", exc.detail)
            return
        if message is None:
            return
        if isinstance(message, FeatureFlags):
            self.preview_metadata = message.supports_preview_metadata
        self._deliver(self._previews.text(message))

    def _handle_binary(self, frame: bytes) -> None:
        """Read one binary frame; a preview is delivered, a malformed one reported."""
        try:
            preview = read_frame(frame)
        except MalformedMessage as exc:
            self.errors.report(f"ws_{exc.kind}", exc.detail)
            return
        if preview is not None:
            self._deliver(self._previews.binary(preview))

    def _deliver(self, batch: list[Message]) -> None:
        for message in batch:
            try:
                self._on_message(message)
            except Exception as exc:  # the frame parsed, but its content broke the handler
                self.errors.report(
                    "ws_unhandled", f"{type(message).__name__} could not be applied", exc_info=exc
                )

    def _note_closed(self, exc: BaseException) -> None:
        """Report a connection we closed because ComfyUI sent a frame over the limit."""
        if isinstance(exc, websockets.ConnectionClosed):
            sent = exc.sent
            if sent is not None and sent.code == MESSAGE_TOO_BIG:
                self.errors.report(
                    "ws_too_large",
                    f"a WebSocket frame exceeded {self._max_message_bytes} bytes; reconnecting",
                )

"""WebSocket endpoint, socket registry and ComfyUI's delivery rules.

Like ComfyUI, sockets are registered by client id in one dict: a second socket
with the same id replaces the first, and when either closes its cleanup removes
the id, which leaves a surviving socket open but deaf. Messages queued by the
executor are delivered by a single publisher in order, and the recipient is
looked up when the message is sent, not when it was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import hostile
from .faults import Faults

log = logging.getLogger(__name__)

# Binary event types (first 4 bytes of a binary frame, big-endian).
PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

SERVER_FEATURES: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": 104857600}


@dataclass(eq=False)
class Socket:
    """One open WebSocket and what ComfyUI keeps about it."""

    sid: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    feature_flags: dict[str, Any] = field(default_factory=dict)
    sent: int = 0

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (client sees 1006)."""
        if self.transport is not None:
            self.transport.abort()


Outgoing = tuple[str | int, Any, str | None]


class SocketHub:
    """Registry of sockets plus the ordered outgoing message queue."""

    def __init__(
        self,
        get_faults: Callable[[], Faults],
        queue_remaining: Callable[[], int],
        reconnect_node: Callable[[str], str | None],
    ) -> None:
        self._get_faults = get_faults
        self._queue_remaining = queue_remaining
        self.reconnect_node = reconnect_node
        self.sockets: dict[str, Socket] = {}
        self._all: set[Socket] = set()
        self._outgoing: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        self._publisher = asyncio.create_task(self._publish_loop(), name="sim-ws-publisher")

    async def stop(self) -> None:
        """Abort every socket (no close frame) and stop publishing."""
        for sock in list(self._all):
            sock.abort()
        self._all.clear()
        self.sockets.clear()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None

    # -- queries used by the executor ---------------------------------------
    def faults(self) -> Faults:
        return self._get_faults()

    def supports_preview_metadata(self, sid: str | None) -> bool:
        sock = self.sockets.get(sid) if sid is not None else None
        return bool(sock and sock.feature_flags.get("supports_preview_metadata"))

    def status_data(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}

    # -- sending ------------------------------------------------------------
    def send_sync(self, event: str | int, data: Any, sid: str | None) -> None:
        """Queue a message: to ``sid`` if given (dropped if no such socket), else to all."""
        self._outgoing.put_nowait((event, data, sid))

    def broadcast_status(self) -> None:
        self.send_sync("status", self.status_data(), None)

    async def _publish_loop(self) -> None:
        while True:
            event, data, sid = await self._outgoing.get()
            targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
            for sock in targets:
                if sock is None:
                    continue
                try:
                    await self._deliver(sock, event, data)
                except Exception:  # one broken socket must not stop delivery to the others
                    log.exception("failed to send %s to %s", event, sock.sid)

    async def _deliver(self, sock: Socket, event: str | int, data: Any) -> None:
        if sock.ws.closed:
            return
        try:
            if isinstance(event, int):
                frame = hostile.binary_frame(event, bytes(data), self._get_faults())
                await sock.ws.send_bytes(frame)
            else:
                await sock.ws.send_str(hostile.message_text(event, data, self._get_faults()))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("send to %s failed: %s", sock.sid, exc)
            return
        sock.sent += 1
        limit = self._get_faults().ws_drop_after_messages
        if limit is not None and sock.sent >= limit:
            log.info("fault: dropping socket %s after %d messages", sock.sid, sock.sent)
            sock.abort()

    # -- endpoint -------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        sock = Socket(sid=sid, ws=ws, transport=request.transport)
        self.sockets[sid] = sock
        self._all.add(sock)
        try:
            await self._deliver(sock, "status", {**self.status_data(), "sid": sid})
            node = self.reconnect_node(sid)
            if node is not None:
                await self._deliver(sock, "executing", {"node": node})
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    payload = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if first and isinstance(payload, dict) and payload.get("type") == "feature_flags":
                    flags = payload.get("data", {})
                    sock.feature_flags = flags if isinstance(flags, dict) else {}
                    # Sent to whichever socket holds the id now, as ComfyUI does.
                    current = self.sockets.get(sid)
                    if current is not None:
                        await self._deliver(current, "feature_flags", dict(SERVER_FEATURES))
                first = False
        finally:
            # ComfyUI pops by id, even when a newer socket took the id over.
            self.sockets.pop(sid, None)
            self._all.discard(sock)
        return ws

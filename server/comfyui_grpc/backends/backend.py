"""One ComfyUI server as the gateway sees it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from ..comfyui.client import MAX_ANSWER_BYTES, ComfyUIClient
from ..comfyui.messages import Message
from ..comfyui.reporting import Counter, ProtocolErrors
from ..comfyui.socket import MAX_MESSAGE_BYTES, ComfyUISocket
from ..redact import redact_url
from ..tasks import DEFAULT_POLICY, CrashHandler, RestartPolicy, supervise, within
from .diagnosis import RateLimit, cause_of
from .inventory import Inventory

log = logging.getLogger(__name__)

MessageHandler = Callable[["Backend", Message], None]
ConnectHandler = Callable[["Backend", bool], Awaitable[None]]


class Backend:
    """A ComfyUI base URL with its pooled client, socket and load count.

    ``healthy`` follows the socket: a backend we cannot hold a socket to gets
    no new jobs. The socket runs supervised: a crash is reported to
    ``on_task_crash`` and the socket restarts; one that keeps crashing is
    given up on and reported to ``on_task_give_up`` (liveness fails).
    Everything the client and the socket find malformed in ComfyUI's answers
    and messages is counted through ``count_protocol_error``.

    ``url`` is the backend's public name, its URL without user-info: it is
    what jobs, responses, metrics and logs show. Only the client and the
    socket hold the full URL, and ``headers`` (e.g. ``Authorization``), to
    send them to ComfyUI.
    """

    restart_policy: RestartPolicy = DEFAULT_POLICY
    """How the socket task is restarted after a crash."""

    def __init__(
        self,
        url: str,
        *,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        on_disconnect: Callable[[Backend], None] | None = None,
        client_id: str | None = None,
        deaf_after_seconds: float = 10.0,
        headers: Mapping[str, str] | None = None,
        count_protocol_error: Counter | None = None,
        on_task_crash: CrashHandler | None = None,
        on_task_give_up: CrashHandler | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = redact_url(url.rstrip("/"))
        self.client_id = client_id or f"comfyui-grpc-{uuid.uuid4().hex}"
        self.errors = ProtocolErrors(self.url, count_protocol_error)
        self.client = ComfyUIClient(
            url, headers=headers, max_answer_bytes=max_answer_bytes, errors=self.errors
        )
        self._on_task_crash = on_task_crash
        self._on_task_give_up = on_task_give_up
        self.inventory: Inventory | None = None
        """What it can run, from ``/object_info`` (the last one read)."""
        self.inventory_read = asyncio.Event()
        """Set once an inventory was read: jobs are routed to it from then on."""
        self._on_disconnect_cb = on_disconnect
        self._on_connect_cb = on_connect
        self.socket = ComfyUISocket(
            url.rstrip("/"),
            self.client_id,
            headers=headers,
            on_message=lambda message: on_message(self, message),
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            on_error=self._failed,
            deaf_after_seconds=deaf_after_seconds,
            max_message_bytes=max_message_bytes,
            errors=self.errors,
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
            name = f"comfyui-socket {self.url}"
            self._task = asyncio.create_task(
                supervise(
                    self.socket.run,
                    name,
                    policy=self.restart_policy,
                    on_crash=self._on_task_crash,
                    on_give_up=self._on_task_give_up,
                ),
                name=name,
            )

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for the socket and the first inventory (jobs are routed to it then)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await within(self.socket.connected.wait(), timeout):
            return False
        return await within(self.inventory_read.wait(), max(0.0, deadline - loop.time()))

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # supervise never raises; closing must not either
                log.exception("socket task of %s failed", self.url)
        await self.client.aclose()

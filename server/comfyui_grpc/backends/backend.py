"""One ComfyUI server as the gateway sees it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from ..comfyui.client import MAX_ANSWER_BYTES, ComfyUIClient
from ..comfyui.messages import Message
from ..comfyui.reporting import Counter, ProtocolErrors
from ..comfyui.socket import MAX_MESSAGE_BYTES, ComfyUISocket
from ..redact import redact_url
from ..tasks import DEFAULT_POLICY, CrashHandler, RestartPolicy, supervise, within

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
        self.outstanding: set[str] = set()
        # Jobs waiting in this backend's queue; may hold stale ids until the
        # next position update prunes them.
        self.waiting: set[str] = set()
        self._on_disconnect_cb = on_disconnect
        self.socket = ComfyUISocket(
            url.rstrip("/"),
            self.client_id,
            headers=headers,
            on_message=lambda message: on_message(self, message),
            on_connect=lambda first: on_connect(self, first),
            on_disconnect=self._disconnected,
            deaf_after_seconds=deaf_after_seconds,
            max_message_bytes=max_message_bytes,
            errors=self.errors,
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
        return await within(self.socket.connected.wait(), timeout)

    async def close(self) -> None:
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

"""Why a ComfyUI backend cannot be reached, in words an operator can act on.

A mistyped URL and a ComfyUI that is still starting look the same from the
socket's retry loop; they differ in what to do about them. Each connection
failure is therefore reduced to a short cause ("connection refused",
"DNS lookup failed", "TLS: ...", "HTTP 404: this is not ComfyUI") and
sorted into *transient* (retrying will work once ComfyUI is up) and
*misconfigured* (retrying will not; check ``--comfyui-url``). The same text
goes into the WARNING log line and into the ``UNAVAILABLE`` callers get.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)

from ..tasks import within

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger(__name__)

NOT_COMFYUI = "this is not ComfyUI"
RETRY_TRANSIENT_SECONDS = 5.0
"""RetryInfo for a backend that refuses or times out: about one reconnect attempt."""
RETRY_MISCONFIGURED_SECONDS = 30.0
"""RetryInfo when every backend looks misconfigured: retrying soon will not help."""
LOG_REPEAT_SECONDS = 60.0
"""The same cause for the same backend is logged again at most this often."""


@dataclass(frozen=True, slots=True)
class Cause:
    text: str
    misconfigured: bool


def cause_of(exc: BaseException) -> Cause:
    """The short reason a connection attempt to ComfyUI failed."""
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        if code in (401, 403):
            return Cause(f"HTTP {code}: ComfyUI refused the gateway (auth or origin check)", True)
        if code >= 500:
            return Cause(f"HTTP {code} from ComfyUI", False)
        return Cause(f"HTTP {code}: {NOT_COMFYUI} (no WebSocket at /ws)", True)
    if isinstance(exc, InvalidURI):
        return Cause(f"not a usable URL ({exc})", True)
    if isinstance(exc, InvalidMessage | InvalidHandshake):
        return Cause(f"{NOT_COMFYUI} (the answer is not HTTP/WebSocket)", True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Cause(f"TLS: certificate not trusted ({exc.verify_message or exc.reason})", True)
    if isinstance(exc, ssl.SSLError):
        return Cause(f"TLS: {exc.reason or exc}", True)
    if isinstance(exc, socket.gaierror):
        return Cause(f"DNS lookup failed ({exc.strerror or exc})", True)
    if isinstance(exc, ConnectionRefusedError) or (
        # asyncio's "Multiple exceptions" for a name with several addresses (::1, 127.0.0.1)
        isinstance(exc, OSError)
        and exc.errno is None
        and f"[Errno {errno.ECONNREFUSED}]" in str(exc)
    ):
        return Cause("connection refused", False)
    if isinstance(exc, ConnectionClosed):
        return Cause("connection lost", False)
    if isinstance(exc, TimeoutError):
        return Cause("timed out connecting", False)
    if isinstance(exc, ConnectionError):
        return Cause(f"connection lost ({exc.strerror or type(exc).__name__})", False)
    if isinstance(exc, OSError):
        return Cause(exc.strerror or str(exc) or type(exc).__name__, False)
    return Cause(str(exc) or type(exc).__name__, False)


class Diagnosed(Protocol):
    """What :func:`describe_unavailable` reads from a backend."""

    url: str

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> str: ...

    @property
    def misconfigured(self) -> bool: ...

    @property
    def down_since(self) -> float | None: ...


def _one(backend: Diagnosed, now: float) -> str:
    cause = backend.last_error or "not connected yet"
    if backend.down_since is not None:
        cause += f", for {max(0, round(now - backend.down_since))} s"
    return f"{backend.url} ({cause})"


def describe_unavailable(backends: Iterable[Diagnosed]) -> str:
    """The ``UNAVAILABLE`` message when no backend can take a job: every
    backend with its last error, and advice that fits the causes."""
    down = [b for b in backends if not b.healthy]
    if not down:
        return "no ComfyUI backend is configured or discovered yet; check --comfyui-url"
    now = time.monotonic()
    listed = "; ".join(_one(b, now) for b in down)
    if all(b.misconfigured for b in down):
        advice = "check the gateway's --comfyui-url: retrying will not help"
    else:
        advice = "retry shortly (ComfyUI may be starting or restarting)"
    return f"no ComfyUI backend is reachable: {listed}; {advice}"


def retry_delay_seconds(backends: Iterable[Diagnosed]) -> float:
    """The RetryInfo delay to send with :func:`describe_unavailable`."""
    down = [b for b in backends if not b.healthy]
    if down and all(b.misconfigured for b in down):
        return RETRY_MISCONFIGURED_SECONDS
    return RETRY_TRANSIENT_SECONDS


class RateLimit:
    """True for a new message, and again for a repeat once ``every`` seconds passed."""

    def __init__(self, every: float = LOG_REPEAT_SECONDS) -> None:
        self.every = every
        self._last_text = ""
        self._last_time = 0.0

    def allow(self, text: str) -> bool:
        now = time.monotonic()
        if text == self._last_text and now - self._last_time < self.every:
            return False
        self._last_text, self._last_time = text, now
        return True

    def reset(self) -> None:
        self._last_text = ""


async def check_at_start(backends: Sequence[Backend], timeout: float) -> list[str]:
    """Wait (up to ``timeout``) for each backend's first connection attempt and
    log what was found, one line each; returns the lines (for tests)."""
    await asyncio.gather(*(within(b.attempted.wait(), timeout) for b in backends))
    lines: list[str] = []
    reachable = 0
    for backend in backends:
        if backend.healthy:
            reachable += 1
            version = ""
            with contextlib.suppress(Exception):
                stats = await asyncio.wait_for(backend.client.system_stats(), timeout)
                version = str(stats.get("system", {}).get("comfyui_version", ""))
            line = f"ComfyUI at {backend.url}: connected" + (
                f" (ComfyUI {version})" if version else ""
            )
            log.info("%s", line, extra={"backend": backend.url})
        else:
            cause = backend.last_error or f"no answer within {timeout:g} s"
            advice = (
                "check --comfyui-url" if backend.misconfigured else "jobs wait until it answers"
            )
            line = f"ComfyUI at {backend.url}: unreachable ({cause}); {advice}"
            log.warning("%s", line, extra={"backend": backend.url})
        lines.append(line)
    summary = f"{reachable} of {len(backends)} ComfyUI backend(s) reachable at start"
    (log.info if reachable else log.warning)("%s", summary)
    lines.append(summary)
    return lines

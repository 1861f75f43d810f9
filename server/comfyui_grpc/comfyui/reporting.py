"""Counting and logging what a ComfyUI backend sent that the gateway cannot use.

A broken or hostile ComfyUI can send a bad frame thousands of times a
second; each one is counted (for the ``backend_protocol_errors_total``
metric) but logged at most once per kind every ``LOG_EVERY_SECONDS``, with
the number left unlogged since, so the log stays readable and cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0

Counter = Callable[[str, str], None]
"""Told ``(backend, kind)`` of every protocol error."""


class ProtocolErrors:
    """One backend's protocol errors: counted always, logged rate-limited."""

    def __init__(
        self,
        backend: str,
        count: Counter | None = None,
        *,
        log_every_seconds: float = LOG_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._count = count
        self._every = log_every_seconds
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        """Errors seen per kind since start."""

    def report(self, kind: str, detail: str, *, exc_info: BaseException | None = None) -> None:
        self.totals[kind] = self.totals.get(kind, 0) + 1
        if self._count is not None:
            self._count(self.backend, kind)
        now = self._clock()
        last = self._last_logged.get(kind)
        if last is not None and now - last < self._every:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._last_logged[kind] = now
        skipped = self._unlogged.pop(kind, 0)
        log.warning(
            "ComfyUI at %s sent something unusable (%s): %s%s",
            self.backend,
            kind,
            detail[:500],
            f" ({skipped} more of this kind not logged)" if skipped else "",
            exc_info=exc_info,
            extra={"backend": self.backend},
        )

"""The set of ComfyUI backends (which one runs a job is the scheduler's choice)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Unavailable
from .backend import Backend
from .diagnosis import describe_unavailable, retry_delay_seconds


class BackendPool:
    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __len__(self) -> int:
        return len(self._backends)

    def add(self, backend: Backend) -> None:
        self._backends[backend.url] = backend

    def remove(self, url: str) -> Backend | None:
        return self._backends.pop(url.rstrip("/"), None)

    def get(self, url: str) -> Backend | None:
        return self._backends.get(url.rstrip("/"))

    @property
    def healthy(self) -> list[Backend]:
        return [b for b in self._backends.values() if b.healthy]

    def unavailable(self) -> Unavailable:
        """The error for a caller when no backend is up: which ones, and why not."""
        backends = list(self._backends.values())
        return Unavailable(
            describe_unavailable(backends),
            reason="NO_BACKEND",
            retry_after_seconds=retry_delay_seconds(backends),
        )

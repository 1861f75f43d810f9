"""Finding ComfyUI pods behind one DNS name (a Kubernetes headless Service).

The name is re-resolved periodically; every address becomes a backend of
its own (same scheme, port and path), pods that appear are added and pods
that vanish are removed, their jobs handled as lost.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from ..redact import redact_url

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in a stable order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def with_address(url: str, address: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    user_info, at, _ = parts.netloc.rpartition("@")  # credentials go to every address
    netloc = f"{user_info}{at}{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class Discovery:
    """Keeps the set of backend URLs in step with DNS."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        add: Callable[[str], object],
        remove: Callable[[str], Awaitable[None]],
        resolver: Resolver = resolve_all,
        interval_seconds: float = 10.0,
    ) -> None:
        self.urls = list(urls)
        self._add = add
        self._remove = remove
        self._resolver = resolver
        self.interval = interval_seconds
        self.current: set[str] = set()

    async def refresh(self) -> None:
        wanted: set[str] = set()
        for url in self.urls:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = await self._resolver(host, port)
            except OSError as exc:
                log.warning("cannot resolve %s: %s; keeping the backends it had", host, exc)
                wanted |= {u for u in self.current if urlsplit(u).port == port}
                continue
            wanted |= {with_address(url, address) for address in addresses}
        for url in sorted(wanted - self.current):
            shown = redact_url(url)
            log.info("discovered ComfyUI backend %s", shown, extra={"backend": shown})
            self._add(url)
        for url in sorted(self.current - wanted):
            shown = redact_url(url)
            log.warning("ComfyUI backend %s left DNS", shown, extra={"backend": shown})
            await self._remove(url)
        self.current = wanted

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

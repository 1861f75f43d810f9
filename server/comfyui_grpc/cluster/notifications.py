"""One ``LISTEN`` connection per replica: what the other replicas announce.

Notifications are hints, never the record: a handler reads the store for
the facts. They can be missed (the connection drops, the database
restarts), so after every (re)connection ``on_connect`` is called, and the
parts that listen also poll now and then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import psycopg

log = logging.getLogger(__name__)

RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Notifications:
    def __init__(
        self,
        url: Callable[[], str],
        handlers: Mapping[str, Callable[[str], None]],
        *,
        on_connect: Callable[[], None],
        scrub: Callable[[str], str],
    ) -> None:
        self._url = url
        self._handlers = dict(handlers)
        self._on_connect = on_connect
        self._scrub = scrub
        self.connected = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url(), autocommit=True)
            except psycopg.OperationalError as exc:
                await self._pause(failures, exc)
                failures += 1
                continue
            try:
                for channel in self._handlers:
                    await conn.execute(f'LISTEN "{channel}"'.encode())
                failures = 0
                self.connected.set()
                self._on_connect()
                async for note in conn.notifies():
                    handler = self._handlers.get(note.channel)
                    if handler is not None:
                        handler(note.payload)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                await self._pause(failures, exc)
                failures += 1
            finally:
                self.connected.clear()
                await conn.close()

    async def _pause(self, failures: int, exc: Exception) -> None:
        delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
        if failures in (0, 5):
            log.warning(
                "lost the notifications of other gateway replicas (retrying in %.1f s): %s",
                delay,
                self._scrub(" ".join(str(exc).split())),
            )
        await asyncio.sleep(delay)

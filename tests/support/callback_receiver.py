"""A webhook receiver on a real loopback port, for completion-callback tests.

It records every request (headers, raw body, arrival time) and answers with
the statuses it is told to, in order (the last one repeats).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


class CallbackReceiver:
    def __init__(self, answers: Sequence[int | tuple[int, dict[str, str]]] = (200,)) -> None:
        self.answers = list(answers)
        self.received: list[Received] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        index = len(self.received)
        answer = self.answers[min(index, len(self.answers) - 1)]
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        async with self._arrived:
            self.received.append(Received(dict(request.headers), body, time.monotonic()))
            self._arrived.notify_all()
        return web.Response(status=status, headers=headers, text="ok")

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """The first ``count`` requests, waiting for them to arrive."""

        async def enough() -> list[Received]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)
                return self.received[:count]

        return await asyncio.wait_for(enough(), timeout)

"""The gateway's ComfyUI pool settings, for the comparisons that post to ``/prompt``.

The floor and the ``direct`` variant price "one pooled httpx client"; they
get the same pool the gateway's ComfyUI client uses for its JSON calls
(``API_CONNECTIONS`` connections, calls admitted only when one is free), so
the comparison is of what the gateway does, not of pool tuning.
"""

from __future__ import annotations

import asyncio

import httpx
from comfyui_grpc.comfyui.client import API_CONNECTIONS

HEADERS = {"Content-Type": "application/json"}


class ComfyUIPool:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=API_CONNECTIONS, max_keepalive_connections=API_CONNECTIONS
            ),
            trust_env=False,
        )
        self._slots = asyncio.Semaphore(API_CONNECTIONS)

    async def post(self, path: str, body: bytes) -> httpx.Response:
        async with self._slots:
            return await self._http.post(path, content=body, headers=HEADERS)

    async def aclose(self) -> None:
        await self._http.aclose()

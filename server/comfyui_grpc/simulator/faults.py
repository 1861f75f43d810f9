"""Fault injection knobs and the HTTP middleware that applies them.

Every knob is read on each request, message or node run, so a test can flip it
on a running simulator (``sim.faults.http_500_paths.add("/view")``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own text for an unhandled exception; ComfyUI answers non-JSON
# bodies with exactly this, so injected 500s look the same.
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


@dataclass
class Faults:
    """Faults to inject; the defaults inject none."""

    http_latency_seconds: float = 0.0
    """Delay added before every HTTP request (WebSocket handshakes included)."""
    http_500_paths: set[str] = field(default_factory=set)
    """Paths (without the ``/api`` prefix) answered with a plain-text 500; a path
    also covers its sub-paths (``/history`` covers ``/history/{id}``)."""
    ws_drop_after_messages: int | None = None
    """Abort each socket (no close frame, client sees 1006) after it was sent N frames."""
    fail_node_class: str | None = None
    """Nodes of this class raise at run time, like ``TestFail``."""
    step_seconds: float | None = None
    """Overrides the simulator's step duration (KSampler steps, VHS frames)."""
    time_scale: float | None = None
    """Overrides the simulator's multiplier for ``TestSlowProgress.seconds_per_step``."""
    required_authorization: str | None = None
    """Answer 401 to any request (WebSocket handshakes included) whose
    ``Authorization`` header differs, as an auth proxy in front of ComfyUI does."""

    def fails_path(self, path: str) -> bool:
        """Whether ``path`` (``/api`` prefix already stripped) must answer 500."""
        for target in self.http_500_paths:
            base = target.rstrip("/") or "/"
            if path == base or path.startswith(base.rstrip("/") + "/"):
                return True
        return False


def strip_api_prefix(path: str) -> str:
    """ComfyUI serves every route also under ``/api``; faults name the bare path."""
    if path == "/api":
        return "/"
    if path.startswith("/api/"):
        return path[len("/api") :]
    return path


def faults_middleware(
    get_faults: Callable[[], Faults],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that adds latency and injected 500s."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = get_faults()
        wanted = faults.required_authorization
        if wanted is not None and request.headers.get("Authorization") != wanted:
            return web.Response(status=401, text="401: Unauthorized")
        if faults.http_latency_seconds > 0:
            await asyncio.sleep(faults.http_latency_seconds)
        if faults.fails_path(strip_api_prefix(request.path)):
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
        return await handler(request)

    return middleware

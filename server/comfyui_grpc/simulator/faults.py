"""Fault injection knobs and the HTTP middleware that applies them.

Every knob is read on each request, message or node run, so a test can flip it
on a running simulator (``sim.faults.http_500_paths.add("/view")``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from . import hostile

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
    lose_prompt_answers: int = 0
    """The next N accepted ``POST /prompt`` are queued, then their connection is
    cut before the answer: the prompt landed, the client cannot know it."""
    required_authorization: str | None = None
    """Answer 401 to any request (WebSocket handshakes included) whose
    ``Authorization`` header differs, as an auth proxy in front of ComfyUI does."""

    # -- a hostile ComfyUI (see hostile.py for the exact shapes) -------------
    malformed_messages: set[str] = field(default_factory=set)
    """WebSocket message types (``status``, ``execution_cached``, ...) sent with data
    of the wrong shape instead of the real data; ``not_json`` sends garbage text
    in place of every text message."""
    malformed_answers: set[str] = field(default_factory=set)
    """Paths (``/queue``, ``/history``, ``/object_info``, ``/prompt``,
    ``/system_stats``, ``/upload/image``; sub-paths included) answered 200 with
    JSON of the wrong shape, without acting on the request."""
    huge_answer_paths: set[str] = field(default_factory=set)
    """GET paths answered 200 with a chunked JSON body of ``huge_answer_bytes``."""
    huge_answer_bytes: int = 300 * 1024 * 1024
    endless_view: bool = False
    """``/view`` answers 200 and streams bytes until the client goes away."""
    hostile_output_names: bool = False
    """History entries name output files with absolute paths and ``../``, and
    ``/view`` serves bytes for any name."""
    ws_padding_bytes: int = 0
    """Pads every JSON WebSocket message's data with a string of this many bytes."""
    ws_flood_node_changes: int = 0
    """When a prompt starts, its client is sent this many extra ``executing``
    messages that switch between the prompt's nodes."""

    def fails_path(self, path: str) -> bool:
        """Whether ``path`` (``/api`` prefix already stripped) must answer 500."""
        return _covers(self.http_500_paths, path)

    def malformed_path(self, path: str) -> bool:
        return _covers(self.malformed_answers, path)

    def huge_path(self, path: str) -> bool:
        return _covers(self.huge_answer_paths, path)


def strip_api_prefix(path: str) -> str:
    """ComfyUI serves every route also under ``/api``; faults name the bare path."""
    if path == "/api":
        return "/"
    if path.startswith("/api/"):
        return path[len("/api") :]
    return path


def _covers(targets: set[str], path: str) -> bool:
    for target in targets:
        base = target.rstrip("/") or "/"
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return True
    return False


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
        path = strip_api_prefix(request.path)
        if faults.fails_path(path):
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
        hostile_answer = await hostile.answer(request, path, faults)
        if hostile_answer is not None:
            return hostile_answer
        response = await handler(request)
        if faults.hostile_output_names and path.startswith("/history"):
            return hostile.rename_outputs(response)
        return response

    return middleware

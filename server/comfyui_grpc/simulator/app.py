"""The aiohttp application: routes (each also under ``/api``), middlewares, WebSocket."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

from aiohttp import web

from . import routes_files, routes_info, routes_prompt
from .faults import faults_middleware
from .services import Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str) -> bool:
    hostname = urlparse(f"http://{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


@web.middleware
async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ComfyUI refuses cross-origin browser requests to a loopback server (403)."""
    host = request.headers.get("Host")
    origin = request.headers.get("Origin")
    if host and origin and _is_loopback(host) and urlparse(origin).netloc.lower() != host.lower():
        return web.Response(status=403, text="Forbidden")
    return await handler(request)


@web.middleware
async def unknown_route(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths (e.g. ``/api/jobs``) get ComfyUI's empty, chunked 404."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        response = web.StreamResponse(status=404)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        await response.write_eof()
        return response


def build_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[unknown_route, origin_check, faults_middleware(services.get_faults)],
        client_max_size=100 * 1024 * 1024,
    )
    table = [
        *routes_prompt.routes(services),
        *routes_files.routes(services),
        *routes_info.routes(services),
        web.get("/ws", services.hub.handle),
    ]
    for route in table:
        app.router.add_route(route.method, route.path, route.handler)
        app.router.add_route(route.method, "/api" + route.path, route.handler)
    return app

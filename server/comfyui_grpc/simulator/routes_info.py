"""Informational routes: /system_stats, /features, /object_info, /models, /embeddings, /free."""

from __future__ import annotations

import os
import sys
from typing import Any

from aiohttp import web

from .services import Services
from .ws import SERVER_FEATURES

COMFYUI_VERSION = "0.3.64"  # the version whose protocol the simulator reproduces


def _memory() -> tuple[int, int]:
    """Total and available RAM from /proc/meminfo (zeros where unavailable)."""
    total = free = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    free = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return total, free


def system_stats() -> dict[str, Any]:
    total, free = _memory()
    return {
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "simulated",
            "embedded_python": False,
            "argv": list(sys.argv),
        },
        "devices": [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": total,
                "vram_free": free,
                "torch_vram_total": total,
                "torch_vram_free": free,
            }
        ],
    }


def routes(services: Services) -> list[web.RouteDef]:
    catalog = services.catalog

    async def get_system_stats(request: web.Request) -> web.Response:
        return web.json_response(system_stats())

    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    async def get_object_info(request: web.Request) -> web.Response:
        return web.json_response(catalog.object_info())

    async def get_object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        return web.json_response({name: catalog.spec(name)} if name in catalog else {})

    async def get_models(request: web.Request) -> web.Response:
        from .nodes.catalog import MODEL_FOLDERS

        return web.json_response(list(MODEL_FOLDERS))

    async def get_model_folder(request: web.Request) -> web.Response:
        files = catalog.model_files(request.match_info["folder"])
        if files is None:
            return web.Response(status=404)
        return web.json_response(files)

    async def get_embeddings(request: web.Request) -> web.Response:
        return web.json_response([])

    async def post_free(request: web.Request) -> web.Response:
        return web.Response(status=200)

    return [
        web.get("/system_stats", get_system_stats),
        web.get("/features", get_features),
        web.get("/object_info", get_object_info),
        web.get("/object_info/{node_class}", get_object_info_node),
        web.get("/models", get_models),
        web.get("/models/{folder}", get_model_folder),
        web.get("/embeddings", get_embeddings),
        web.post("/free", post_free),
    ]

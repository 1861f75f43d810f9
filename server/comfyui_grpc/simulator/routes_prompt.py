"""Queue-side HTTP routes: /prompt, /queue, /interrupt, /history."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import web

from ..comfyui.validation import validate_prompt
from .faults import INTERNAL_ERROR_TEXT
from .queue import SENSITIVE_EXTRA_DATA_KEYS, QueueItem
from .services import Services

log = logging.getLogger(__name__)


async def _json_or_empty(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError:
        return {}


def routes(services: Services) -> list[web.RouteDef]:
    queue = services.queue

    async def post_prompt(request: web.Request) -> web.Response:
        # ComfyUI crashes on a body that is not a JSON object: aiohttp's plain 500.
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
        if "number" in body:
            number: int | float = float(body["number"])
        else:
            number = queue.next_number(front="front" in body and bool(body["front"]))
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            raise TypeError("prompt must be a JSON object")
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        targets = body.get("partial_execution_targets")
        result = validate_prompt(services.catalog, prompt, targets)
        extra_data = body.get("extra_data", {})
        if not isinstance(extra_data, dict):
            extra_data = {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            log.info("invalid prompt: %s", result.error)
            return web.json_response(
                {"error": result.error, "node_errors": result.node_errors}, status=400
            )
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        services.submitted_prompt_ids.append(prompt_id)
        services.submitted_client_ids.append(str(body.get("client_id", "")))
        queue.put(QueueItem(number, prompt_id, prompt, extra_data, result.outputs, sensitive))
        faults = services.get_faults()
        if faults.lose_prompt_answers > 0 and request.transport is not None:
            faults.lose_prompt_answers -= 1
            request.transport.abort()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": queue.remaining()}})

    async def get_queue(request: web.Request) -> web.Response:
        return web.json_response(queue.snapshot())

    async def post_queue(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            queue.wipe()
        for prompt_id in body.get("delete", []):
            if queue.delete_pending(prompt_id):
                services.deleted_prompt_ids.append(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        if isinstance(body, dict) and "prompt_id" in body:
            if body["prompt_id"] in queue.running_ids():
                services.executor.interrupt()
            else:
                log.info("interrupt: prompt %s is not running, skipping", body["prompt_id"])
        else:
            services.executor.interrupt()
        return web.Response(status=200)

    async def get_history(request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        offset = int(request.query.get("offset", -1))
        limit = int(max_items) if max_items is not None else None
        return web.json_response(queue.get_history(max_items=limit, offset=offset))

    async def get_history_item(request: web.Request) -> web.Response:
        return web.json_response(queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            queue.wipe_history()
        for prompt_id in body.get("delete", []):
            queue.delete_history(prompt_id)
        return web.Response(status=200)

    return [
        web.post("/prompt", post_prompt),
        web.get("/prompt", get_prompt),
        web.get("/queue", get_queue),
        web.post("/queue", post_queue),
        web.post("/interrupt", post_interrupt),
        web.get("/history", get_history),
        web.get("/history/{prompt_id}", get_history_item),
        web.post("/history", post_history),
    ]

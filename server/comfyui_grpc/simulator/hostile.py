"""A hostile ComfyUI: answers and messages of the wrong shape, huge or endless
bodies and file names that try to escape, for the knobs in :mod:`.faults`.

Each shape here is one a broken or malicious ComfyUI (or a proxy in front of
it) could send: what the protocol names as an object is a string or a list,
numbers are strings, ids are objects. None of this runs unless a knob is set.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .faults import Faults

CHUNK = b"x" * (1024 * 1024)
NOT_JSON = "{this is not JSON"
HOSTILE_VIEW_BODY = b"\x89PNG\r\n\x1a\n hostile bytes served for any name"


def malformed_message(event: str, data: Any) -> Any:
    """The data to send instead of ``data`` for a message of type ``event``."""
    prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
    match event:
        case "status":
            return {"status": "x"}
        case "execution_start":
            return {"prompt_id": {"not": "a string"}}
        case "execution_cached":
            return {"nodes": 5, "prompt_id": prompt_id}
        case "executing":
            return {"node": {"not": "a node id"}, "prompt_id": prompt_id}
        case "progress":
            return {"value": "many", "max": [], "node": "1", "prompt_id": prompt_id}
        case "progress_state":
            return {"nodes": [1, 2, 3], "prompt_id": prompt_id}
        case "executed":
            return {"node": "1", "output": ["not", "an", "object"], "prompt_id": prompt_id}
        case "execution_success":
            return ["not", "an", "object"]
        case "execution_error":
            return {"prompt_id": prompt_id, "node_id": [], "exception_message": {"x": 1}}
        case "execution_interrupted":
            return {"prompt_id": prompt_id, "node_id": {"x": 1}}
    return "malformed"


def binary_frame(event: int, payload: bytes, faults: Faults) -> bytes:
    """A binary frame; with ``preview`` in the malformed messages, previews lie.

    A type-1 preview claims image format 9; a type-4 one claims more
    metadata than the frame holds. Other binary frames are left alone.
    """
    if "preview" in faults.malformed_messages and event in (1, 4):
        payload = b"\x00\x00\x00\x09" + payload[4:] if event == 1 else b"\x7f\xff\xff\xff"
    return struct.pack(">I", event) + payload


def message_text(event: str, data: Any, faults: Faults) -> str:
    """The text frame for a message, malformed when the faults say so."""
    if "not_json" in faults.malformed_messages:
        return NOT_JSON
    if event in faults.malformed_messages:
        data = malformed_message(event, data)
    if faults.ws_padding_bytes and isinstance(data, dict):
        data = {**data, "padding": "x" * faults.ws_padding_bytes}
    return json.dumps({"type": event, "data": data})


def _malformed_answer(method: str, path: str) -> Any:
    if method == "POST" and path.startswith("/prompt"):
        return {"prompt_id": 5, "number": "first", "node_errors": "none"}
    if method == "POST" and path.startswith("/upload"):
        return {"name": 5, "subfolder": []}
    if path.startswith("/queue"):
        return {"queue_running": [[0]], "queue_pending": "everything"}
    if path.startswith("/history/"):
        prompt_id = path.split("/")[2]
        return {prompt_id: {"outputs": [1, 2], "status": "done"}}
    if path.startswith("/history"):
        return ["not", "a", "map"]
    if path.startswith("/prompt"):
        return {"exec_info": "busy"}
    if path.startswith("/object_info"):
        return ["not", "a", "map"]
    return "malformed"


async def _endless(
    request: web.Request, content_type: str, prefix: bytes = b""
) -> web.StreamResponse:
    """200 with a chunked body that never ends (until the client disconnects)."""
    response = web.StreamResponse(status=200)
    response.content_type = content_type
    await response.prepare(request)
    if prefix:
        await response.write(prefix)
    try:
        while True:
            await response.write(CHUNK)
    except (ConnectionError, RuntimeError):
        pass
    return response


async def _huge_json(request: web.Request, size: int) -> web.StreamResponse:
    """200 with a chunked JSON body of ``size`` bytes: ``{"pad": "xxxx..."}``."""
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        await response.write(b'{"pad": "')
        left = max(0, size - 11)
        while left > 0:
            chunk = CHUNK[: min(left, len(CHUNK))]
            await response.write(chunk)
            left -= len(chunk)
        await response.write(b'"}')
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    return response


async def answer(request: web.Request, path: str, faults: Faults) -> web.StreamResponse | None:
    """The hostile answer to a request, or None to answer normally."""
    if request.method == "GET":
        if path == "/view" and faults.endless_view:
            return await _endless(request, "image/png")
        if path == "/view" and faults.hostile_output_names:
            return web.Response(body=HOSTILE_VIEW_BODY, content_type="image/png")
        if faults.huge_path(path):
            return await _huge_json(request, faults.huge_answer_bytes)
    if faults.malformed_path(path):
        return web.json_response(_malformed_answer(request.method, path))
    return None


def hostile_files(files: list[Any]) -> list[Any]:
    """Output file entries renamed to escape: ``../`` and absolute names and subfolders."""
    renamed: list[Any] = []
    for item in files:
        if not isinstance(item, dict) or "filename" not in item:
            renamed.append(item)
            continue
        name = str(item["filename"])
        renamed.append({**item, "filename": f"../../../{name}", "subfolder": "../.."})
        renamed.append({**item, "filename": f"/etc/{name}", "subfolder": "/etc"})
    return renamed


def rename_outputs(response: web.StreamResponse) -> web.StreamResponse:
    """A ``/history`` answer with every output file given a hostile name."""
    if not isinstance(response, web.Response) or response.body is None:
        return response
    try:
        history = json.loads(bytes(response.body))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return response
    if not isinstance(history, dict):
        return response
    for entry in history.values():
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        if not isinstance(outputs, dict):
            continue
        for ui in outputs.values():
            if isinstance(ui, dict):
                for key, items in list(ui.items()):
                    if isinstance(items, list):
                        ui[key] = hostile_files(items)
    return web.json_response(history, status=response.status)

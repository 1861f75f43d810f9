"""Comparing a replayed HTTP answer with the recorded one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replay_model import IdMap, Line, first_difference, shape

HEADER_NAMES = {
    "content-type", "content-length", "content-disposition", "cache-control", "etag",
    "last-modified", "accept-ranges", "content-range", "transfer-encoding",
}  # fmt: skip


def magic(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"GIF8"):
        return "gif"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    return "empty" if not head else "other"


def http_problems(
    request: Line, recorded: Line, status: int, headers: Mapping[str, str], body: Any, ids: IdMap
) -> list[str]:
    """How a replayed HTTP answer differs from the recorded one (empty: it matches)."""
    where = f"{request['method']} {request['path']}"
    problems = []
    if status != recorded["status"]:
        problems.append(f"{where}: status {status} != recorded {recorded['status']}")
    want_headers = {k.lower() for k in recorded.get("headers", {})}
    got_headers = {k.lower() for k in headers} & HEADER_NAMES
    if want_headers != got_headers:
        problems.append(
            f"{where}: headers {sorted(got_headers)} != recorded {sorted(want_headers)}"
        )
    for name in ("Content-Type", "Accept-Ranges"):
        if name in recorded.get("headers", {}) and headers.get(name) != recorded["headers"][name]:
            problems.append(
                f"{where}: {name} {headers.get(name)!r} != {recorded['headers'][name]!r}"
            )
    if "body" in recorded:
        want = recorded["body"]
        if isinstance(want, dict) and want.get("omitted"):
            problems.extend(omitted_object_info(where, body))
        else:
            difference = first_difference(shape(want, ids), shape(body, ids.replayed()))
            if difference:
                problems.append(f"{where}: body differs at {difference}")
    elif "text" in recorded:
        if body != recorded["text"]:
            problems.append(f"{where}: text {body!r} != recorded {recorded['text']!r}")
    elif "binary" in recorded:
        head = bytes.fromhex(recorded["binary"]["head_hex"])
        data = body if isinstance(body, bytes) else b""
        if magic(head) != magic(data[:16]):
            problems.append(f"{where}: content {magic(data[:16])} != recorded {magic(head)}")
    return problems


def omitted_object_info(where: str, body: Any) -> list[str]:
    """The full /object_info body was not recorded (500 KB); check its structure."""
    if not isinstance(body, dict) or not body:
        return [f"{where}: expected a non-empty object of node classes"]
    problems = []
    keys = {
        "input", "input_order", "output", "output_is_list", "output_name", "name",
        "display_name", "description", "python_module", "category", "output_node",
    }  # fmt: skip
    for name, info in body.items():
        if not keys <= set(info):
            problems.append(f"{where}: {name} lacks {sorted(keys - set(info))}")
    return problems

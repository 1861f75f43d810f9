"""Transcript lines and live WebSocket frames, reduced to comparable form.

Both sides (recorded and replayed) become ``Msg`` objects; prompt ids are
mapped from recorded to replayed ids before comparing. Values that legitimately
differ between runs (ids, timestamps, sids, temp suffixes, RAM figures,
tracebacks) are reduced to their type; values that carry protocol meaning
(error types, counters, file names, queue sizes) are compared exactly.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "comfyui_transcripts"

Line = dict[str, Any]


def load_transcript(name: str) -> list[Line]:
    with (TRANSCRIPTS / f"{name}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def scenario_names() -> list[str]:
    return sorted(p.stem for p in TRANSCRIPTS.glob("*.jsonl"))


@dataclass
class Msg:
    """One server-to-client WebSocket frame."""

    kind: str  # "text" | "binary"
    type: str = ""  # text: message type
    data: dict[str, Any] = field(default_factory=dict)
    event: int = 0  # binary: event type
    reading: dict[str, Any] = field(default_factory=dict)  # binary: decoded header

    @property
    def prompt_id(self) -> str | None:
        if self.kind == "binary":
            meta = self.reading.get("metadata") or {}
            return meta.get("prompt_id")
        pid = self.data.get("prompt_id")
        return pid if isinstance(pid, str) else None


def recorded_msg(line: Line) -> Msg:
    if line["kind"] == "text":
        return Msg("text", type=line["msg"]["type"], data=line["msg"]["data"])
    return Msg("binary", event=line["event_type"], reading=line.get("reading", {}))


def live_text(raw: str) -> Msg:
    payload = json.loads(raw)
    return Msg("text", type=payload["type"], data=payload["data"])


def live_binary(raw: bytes) -> Msg:
    """Decode a binary frame the way the transcript recorder described them."""
    event = struct.unpack(">I", raw[:4])[0]
    body = raw[4:]
    reading: dict[str, Any] = {}
    if event == 1:
        code = struct.unpack(">I", body[:4])[0]
        reading = {"image_format": {1: "JPEG", 2: "PNG"}.get(code, str(code)), "image": body[4:]}
    elif event == 3:
        size = struct.unpack(">I", body[:4])[0]
        reading = {"node_id": body[4 : 4 + size].decode(), "text": body[4 + size :].decode()}
    elif event == 4:
        size = struct.unpack(">I", body[:4])[0]
        reading = {"metadata": json.loads(body[4 : 4 + size]), "image": body[4 + size :]}
    return Msg("binary", event=event, reading=reading)


class IdMap:
    """Recorded prompt id -> replayed prompt id (client-chosen ids map to themselves)."""

    def __init__(self) -> None:
        self.forward: dict[str, str] = {}

    def add(self, recorded: str, replayed: str) -> None:
        self.forward[recorded] = replayed

    def replayed(self) -> IdMap:
        """The identity map over replayed ids (so they compare as ids, not as strings)."""
        mine = IdMap()
        mine.forward = {v: v for v in self.forward.values()}
        return mine

    def __call__(self, pid: str | None) -> str | None:
        if pid is None:
            return None
        return self.forward.get(pid, pid)


# -- tokens (used to wait for "the same point" in the replay) -------------------


def token(msg: Msg, ids: IdMap) -> tuple[Any, ...]:
    """A short identity of a message: equal tokens mean 'the same event'."""
    if msg.kind == "binary":
        if msg.event == 3:
            return ("binary", 3, msg.reading.get("node_id"), msg.reading.get("text"))
        if msg.event == 4:
            meta = msg.reading.get("metadata") or {}
            return ("binary", 4, ids(meta.get("prompt_id")), meta.get("node_id"))
        return ("binary", msg.event, msg.reading.get("image_format"))
    data = msg.data
    pid = ids(msg.prompt_id)
    if msg.type == "status":
        return ("status", data["status"]["exec_info"]["queue_remaining"], "sid" in data)
    if msg.type in ("executing", "executed"):
        return (msg.type, pid, data.get("node"), "prompt_id" in data)
    if msg.type == "progress":
        return ("progress", pid, data.get("node"), data.get("value"), data.get("max"))
    if msg.type == "progress_state":
        nodes = data.get("nodes", {})
        return ("progress_state", pid, tuple((n, v["state"], v["value"]) for n, v in nodes.items()))
    return (msg.type, pid)


# -- JSON shapes ------------------------------------------------------------------

FREE_LISTS = {"traceback", "argv"}  # contents differ between runs by nature
# Built from Python sets in ComfyUI, so their order is arbitrary ("errors": a node's
# inputs are validated in set order; transcript 16 notes the order changes between runs).
SET_LISTS = {"executed", "current_outputs", "errors"}
EXACT_KEYS = {
    "type", "message", "details", "status_str", "completed", "class_type", "input_name",
    "node_type", "exception_type", "exception_message", "subfolder", "format", "frame_rate",
    "number", "queue_remaining", "value", "max", "state", "received_value", "received_type",
    "dependent_outputs", "node", "node_id", "display_node", "name", "output_node", "category",
    "input", "input_order", "output", "output_name", "output_is_list", "supports_preview_metadata",
    "max_upload_size", "workflow", "animated", "nodes", "executed", "filename", "text",
}  # fmt: skip
TEMP_NAME = re.compile(r"ComfyUI_temp_[a-z]{5}_")


def normal_filename(value: str) -> str:
    return TEMP_NAME.sub("ComfyUI_temp_?????_", value)


def _is_queue_item(value: list[Any]) -> bool:
    return (
        len(value) == 5
        and isinstance(value[1], str)
        and isinstance(value[2], dict)
        and isinstance(value[4], list)
    )


def shape(value: Any, ids: IdMap, key: str | None = None) -> Any:
    """Structure with types for free values and exact values for meaningful keys."""
    if isinstance(value, dict):
        return {str(ids(k)): shape(v, ids, k) for k, v in value.items()}
    if isinstance(value, list):
        if key in FREE_LISTS:
            return "list"
        if key in SET_LISTS:
            return sorted(map(repr, (shape(v, ids) for v in value)))
        if _is_queue_item(value):
            # [number, prompt_id, prompt, extra_data, outputs]: outputs is a set in ComfyUI.
            head = [shape(v, ids) for v in value[:4]]
            return [*head, sorted(value[4])]
        return [shape(v, ids, key) for v in value]
    if isinstance(value, str):
        if key in ("filename", "workflow"):
            return normal_filename(value)
        if key in ("prompt_id",) or value in ids.forward:
            return ids(value)
        if key in EXACT_KEYS:
            return value
        return "str"
    if key in EXACT_KEYS and not isinstance(value, bool | type(None)):
        return (type(value).__name__, value)
    return type(value).__name__


def first_difference(want: Any, got: Any, path: str = "$") -> str | None:
    """Where two shapes first differ, for readable failure messages."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return f"{path}: keys {sorted(got)} != recorded {sorted(want)}"
        for key in want:
            found = first_difference(want[key], got[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: {len(got)} items != recorded {len(want)}"
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if want == got else f"{path}: {got!r} != recorded {want!r}"


def map_ids(value: Any, ids: IdMap) -> Any:
    """Replace recorded prompt ids by replayed ones in request bodies."""
    if isinstance(value, dict):
        return {k: map_ids(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [map_ids(v, ids) for v in value]
    if isinstance(value, str):
        return ids(value)
    return value


def filenames_in(value: Any) -> list[str]:
    """Every ``filename`` value inside a JSON value."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "filename" and isinstance(item, str):
                found.append(item)
            else:
                found.extend(filenames_in(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(filenames_in(item))
    return found

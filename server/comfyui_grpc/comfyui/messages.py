"""ComfyUI WebSocket text messages, parsed once into small typed records.

Only what the gateway acts on is kept. Unknown types and binary frames
(previews) yield None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Status:
    queue_remaining: int


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    prompt_id: str


@dataclass(frozen=True, slots=True)
class ExecutionCached:
    prompt_id: str
    nodes: list[str]


@dataclass(frozen=True, slots=True)
class Executing:
    """``node`` None means the prompt finished (always the last message)."""

    prompt_id: str | None
    node: str | None


@dataclass(frozen=True, slots=True)
class Progress:
    prompt_id: str
    node: str
    value: int
    max: int


@dataclass(frozen=True, slots=True)
class NodeStates:
    """``progress_state``: node id -> state (``running`` or ``finished``)."""

    prompt_id: str
    states: dict[str, str]


@dataclass(frozen=True, slots=True)
class Executed:
    prompt_id: str
    node: str
    output: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExecutionSuccess:
    prompt_id: str


@dataclass(frozen=True, slots=True)
class ExecutionError:
    prompt_id: str
    node_id: str
    node_type: str
    exception_type: str
    exception_message: str


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str
    node_type: str


Message = (
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | NodeStates
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
)


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse(text: str | bytes) -> Message | None:
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        return None
    kind = raw.get("type")
    data: dict[str, Any] = raw["data"]
    prompt_id = _str(data.get("prompt_id"))
    match kind:
        case "status":
            info = (data.get("status") or {}).get("exec_info") or {}
            return Status(queue_remaining=_int(info.get("queue_remaining")))
        case "execution_start":
            return ExecutionStart(prompt_id)
        case "execution_cached":
            return ExecutionCached(prompt_id, [str(n) for n in data.get("nodes") or []])
        case "executing":
            node = data.get("node")
            return Executing(prompt_id or None, None if node is None else str(node))
        case "progress":
            return Progress(
                prompt_id, _str(data.get("node")), _int(data.get("value")), _int(data.get("max"))
            )
        case "progress_state":
            nodes = data.get("nodes") or {}
            states = {str(k): _str(v.get("state")) for k, v in nodes.items() if isinstance(v, dict)}
            return NodeStates(prompt_id, states)
        case "executed":
            output = data.get("output")
            return Executed(
                prompt_id, _str(data.get("node")), output if isinstance(output, dict) else {}
            )
        case "execution_success":
            return ExecutionSuccess(prompt_id)
        case "execution_error":
            return ExecutionError(
                prompt_id,
                _str(data.get("node_id")),
                _str(data.get("node_type")),
                _str(data.get("exception_type")),
                _str(data.get("exception_message")).strip(),
            )
        case "execution_interrupted":
            return ExecutionInterrupted(
                prompt_id, _str(data.get("node_id")), _str(data.get("node_type"))
            )
    return None

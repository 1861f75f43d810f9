"""ComfyUI WebSocket text messages, parsed once into small typed records.

Only what the gateway acts on is kept. Unknown types yield None. Binary
frames (previews) are read by :mod:`.previews` into :class:`Preview`.
Every field is checked: a frame of the wrong shape raises
:class:`MalformedMessage` instead of a TypeError deep in the caller, so one
bad frame costs one message, never the socket.
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


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    """ComfyUI's answer to our ``feature_flags``: whether it sends preview metadata."""

    supports_preview_metadata: bool


@dataclass(frozen=True, slots=True)
class Preview:
    """A node's intermediate image (a binary frame), attributed to its prompt.

    ``prompt_id`` is empty when the frame could not be attributed (a type-1
    frame before any message of a running prompt). ``value``/``max`` are the
    node's step when known, else 0/0.
    """

    prompt_id: str
    node: str
    content_type: str
    image: bytes
    value: int = 0
    max: int = 0


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
    | FeatureFlags
    | Preview
)


class MalformedMessage(ValueError):
    """A text frame that is not the message ComfyUI's protocol describes.

    ``kind`` is ``not_json``, ``envelope`` (not ``{"type", "data"}``) or the
    message type whose data had the wrong shape; it labels the
    protocol-error metric.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _text(value: Any, kind: str, what: str) -> str:
    """A string (or a number, as ids sometimes are) or nothing; anything else is malformed."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise MalformedMessage(kind, f"{what} is {type(value).__name__}, not a string")


def _opt_str(data: dict[str, Any], key: str, kind: str) -> str:
    return _text(data.get(key), kind, key)


def _number(data: dict[str, Any], key: str, kind: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMessage(kind, f"{key} is {type(value).__name__}, not a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise MalformedMessage(kind, f"{key} is not finite")
    return int(value)


def _dict(data: dict[str, Any], key: str, kind: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedMessage(kind, f"{key} is {type(value).__name__}, not an object")
    return value


def _status(data: dict[str, Any]) -> Status:
    info = _dict(_dict(data, "status", "status"), "exec_info", "status")
    return Status(queue_remaining=_number(info, "queue_remaining", "status"))


def _cached(prompt_id: str, data: dict[str, Any]) -> ExecutionCached:
    nodes = data.get("nodes")
    if nodes is None:
        return ExecutionCached(prompt_id, [])
    if not isinstance(nodes, list):
        raise MalformedMessage("execution_cached", f"nodes is {type(nodes).__name__}, not a list")
    return ExecutionCached(prompt_id, [_text(n, "execution_cached", "a node") for n in nodes])


def _node_states(prompt_id: str, data: dict[str, Any]) -> NodeStates:
    states: dict[str, str] = {}
    for node_id, state in _dict(data, "nodes", "progress_state").items():
        if not isinstance(state, dict):
            raise MalformedMessage("progress_state", f"node {node_id!r} is not an object")
        states[str(node_id)] = _opt_str(state, "state", "progress_state")
    return NodeStates(prompt_id, states)


def _executing(prompt_id: str, data: dict[str, Any]) -> Executing:
    node = data.get("node")
    return Executing(
        prompt_id or None, None if node is None else _opt_str(data, "node", "executing")
    )


def parse(text: str | bytes) -> Message | None:
    """The typed message, or None for a type the gateway does not act on.

    Raises :class:`MalformedMessage` for a frame that is not JSON, not a
    ``{"type", "data"}`` object, or a known type with data of the wrong
    shape: ComfyUI is not trusted to send what its protocol says.
    """
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("not_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise MalformedMessage("envelope", f"a JSON {type(raw).__name__}, not an object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("envelope", "no string type")
    if kind not in _KNOWN:
        return None
    data = raw.get("data")
    if not isinstance(data, dict):
        raise MalformedMessage(kind, f"data is {type(data).__name__}, not an object")
    prompt_id = _opt_str(data, "prompt_id", kind)
    match kind:
        case "status":
            return _status(data)
        case "execution_start":
            return ExecutionStart(prompt_id)
        case "execution_cached":
            return _cached(prompt_id, data)
        case "executing":
            return _executing(prompt_id, data)
        case "progress":
            return Progress(
                prompt_id,
                _opt_str(data, "node", kind),
                _number(data, "value", kind),
                _number(data, "max", kind),
            )
        case "progress_state":
            return _node_states(prompt_id, data)
        case "executed":
            output = data.get("output")
            if output is not None and not isinstance(output, dict):
                raise MalformedMessage(kind, f"output is {type(output).__name__}, not an object")
            return Executed(prompt_id, _opt_str(data, "node", kind), output or {})
        case "execution_success":
            return ExecutionSuccess(prompt_id)
        case "feature_flags":
            flag = data.get("supports_preview_metadata", False)
            return FeatureFlags(supports_preview_metadata=flag is True)
        case "execution_error":
            return ExecutionError(
                prompt_id,
                _opt_str(data, "node_id", kind),
                _opt_str(data, "node_type", kind),
                _opt_str(data, "exception_type", kind),
                _opt_str(data, "exception_message", kind).strip(),
            )
        case _:  # execution_interrupted
            return ExecutionInterrupted(
                prompt_id, _opt_str(data, "node_id", kind), _opt_str(data, "node_type", kind)
            )


_KNOWN = frozenset(
    {
        "status",
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "progress_state",
        "executed",
        "execution_success",
        "execution_error",
        "execution_interrupted",
        "feature_flags",
    }
)

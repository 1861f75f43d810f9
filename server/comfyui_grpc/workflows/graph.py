"""Raw ComfyUI API-format graphs: parsing, normalising, structural checks.

ComfyUI checks a graph's meaning (classes, inputs, models); the gateway
checks only its shape, so a caller gets every structural mistake at once as
field violations, and ComfyUI gets a graph it can parse.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import FieldViolation, InvalidArgument

MAX_NODES = 2000
MAX_DEPTH = 32
NODE_ID_MAX_LENGTH = 64
MAX_WORKFLOW_BYTES = 8 * 1024 * 1024

# A JSON string (with ``:`` after it when it is a key), or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?|[{}\[\]]')


def too_large(field: str, nodes: int | None, max_nodes: int) -> InvalidArgument:
    """The refusal of a workflow with more than ``max_nodes`` nodes (``nodes``
    when known; a check that stopped counting early passes None)."""
    counted = f"{nodes} nodes" if nodes is not None else f"more than {max_nodes} nodes"
    return InvalidArgument(
        f"the workflow has {counted}; at most {max_nodes} are allowed",
        [FieldViolation(field, f"more than {max_nodes} nodes")],
        reason="WORKFLOW_TOO_LARGE",
    )


def too_many_bytes(field: str, size: int, max_bytes: int) -> InvalidArgument:
    return InvalidArgument(
        f"the workflow is {size} bytes; at most {max_bytes} are allowed",
        [FieldViolation(field, f"more than {max_bytes} bytes")],
        reason="WORKFLOW_TOO_LARGE",
    )


def _check_json_shape(text: str, max_nodes: int) -> None:
    """Count top-level keys and nesting before ``json.loads`` builds anything.

    Parsing builds every object of the document, so a 100,000-node workflow
    would cost its whole size in Python objects before the node limit could
    refuse it. This scan only tokenises strings and brackets, and stops at
    the first key over the limit or the first bracket too deep. Invalid JSON
    passes here and is reported by the parser.
    """
    depth = 0
    keys = 0
    for token in _JSON_TOKEN.finditer(text):
        first = text[token.start()]
        if first in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidArgument(
                    "workflow_json is nested too deeply",
                    [FieldViolation("workflow_json", f"nested more than {MAX_DEPTH} levels")],
                )
        elif first in "}]":
            depth -= 1
        elif depth == 1 and token.group(1) is not None:
            keys += 1
            if keys > max_nodes:
                raise too_large("workflow_json", None, max_nodes)


def whole_numbers_to_int(value: Any) -> Any:
    """``google.protobuf.Struct`` carries every number as a double; ComfyUI
    validates INT inputs with ``int()`` checks that a ``20.0`` would fail, so
    whole numbers go back to integers."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: whole_numbers_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers_to_int(v) for v in value]
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidArgument(
                f"workflow_json has the key {key!r} twice",
                [FieldViolation("workflow_json", f"duplicate key {key!r}")],
            )
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidArgument(
        f"workflow_json contains {name}, which is not valid JSON",
        [FieldViolation("workflow_json", f"{name} is not allowed")],
    )


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidArgument(
            f"workflow_json has the number {text[:40]}, which is out of range",
            [FieldViolation("workflow_json", "numbers must be finite")],
        )
    return value


def parse_workflow_json(text: str, *, max_nodes: int = MAX_NODES) -> dict[str, Any]:
    """Parse ``workflow_json`` keeping integers exact (beyond 2^53 too), refusing
    a document with more than ``max_nodes`` nodes before it is built."""
    _check_json_shape(text, max_nodes)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite,
        )
    except RecursionError as exc:
        raise InvalidArgument(
            "workflow_json is nested too deeply",
            [FieldViolation("workflow_json", "nested too deeply")],
        ) from exc
    except ValueError as exc:
        raise InvalidArgument(
            f"workflow_json is not valid JSON: {exc}",
            [FieldViolation("workflow_json", f"not valid JSON: {exc}")],
        ) from exc
    if not isinstance(value, dict):
        raise InvalidArgument(
            "workflow_json must be a JSON object of nodes",
            [FieldViolation("workflow_json", "must be a JSON object keyed by node id")],
        )
    return value


def check_text(value: Any, field: str) -> None:
    """Refuse non-finite numbers and strings that are not valid UTF-8 (lone
    surrogates from JSON escapes), which ComfyUI could not take either."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidArgument(
                f"{field} holds a number that is not finite",
                [FieldViolation(field, "numbers must be finite (no NaN or Infinity)")],
            )
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise InvalidArgument(
                    f"{field} holds a string that is not valid UTF-8",
                    [FieldViolation(field, "strings must be valid UTF-8")],
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def validate_graph(graph: dict[str, Any], field: str, *, max_nodes: int = MAX_NODES) -> None:
    """Raise InvalidArgument listing every structural problem of ``graph``."""
    if len(graph) > max_nodes:
        raise too_large(field, len(graph), max_nodes)
    check_text(graph, field)
    violations: list[FieldViolation] = []
    if not graph:
        violations.append(FieldViolation(field, "the workflow has no nodes"))
    if _depth(graph, MAX_DEPTH) > MAX_DEPTH:
        raise InvalidArgument(
            f"the workflow is nested more than {MAX_DEPTH} levels deep",
            [FieldViolation(field, f"nested more than {MAX_DEPTH} levels")],
        )
    for node_id, node in graph.items():
        where = f"{field}.{node_id}"
        if not node_id or len(node_id) > NODE_ID_MAX_LENGTH or not node_id.isprintable():
            violations.append(
                FieldViolation(
                    where, f"node ids must be 1-{NODE_ID_MAX_LENGTH} printable characters"
                )
            )
        if not isinstance(node, dict):
            violations.append(
                FieldViolation(where, "a node must be an object with class_type and inputs")
            )
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            violations.append(
                FieldViolation(f"{where}.class_type", "required: the node's class name")
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            violations.append(
                FieldViolation(f"{where}.inputs", "must be an object of input values")
            )
            continue
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source, index = value
                if source not in graph:
                    violations.append(
                        FieldViolation(
                            f"{where}.inputs.{name}",
                            f"links to node {source!r}, which is not in the workflow",
                        )
                    )
                elif not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    violations.append(
                        FieldViolation(
                            f"{where}.inputs.{name}",
                            "a link's output index must be a whole number >= 0",
                        )
                    )
    if violations:
        raise InvalidArgument(
            f"the workflow is malformed ({len(violations)} problem(s)): {violations[0].field}: "
            f"{violations[0].description}",
            violations,
        )

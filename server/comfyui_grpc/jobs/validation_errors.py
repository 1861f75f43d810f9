"""ComfyUI validation errors as field violations a caller can act on.

A 400 from ``POST /prompt`` names nodes and inputs; each becomes a
violation on ``<field>.<node_id>.inputs.<input>`` (``<field>`` is the request
field the graph came from). Typed requests map template nodes back to their
own fields, so an unknown checkpoint in a text-to-image request is reported
on ``text_to_image.checkpoint``. Lists of installed model files are not
passed on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..comfyui.errors import ComfyUIValidationError
from ..errors import FieldViolation, InvalidArgument

_NODE_REF = re.compile(r"Node ID '#([^']+)'")


def _describe(error: Mapping[str, Any], class_type: str) -> str:
    kind = str(error.get("type", ""))
    info = error.get("extra_info") or {}
    message = str(error.get("message", "invalid"))
    if kind == "value_not_in_list":
        return (
            f"{info.get('received_value')!r} is not available on the ComfyUI server "
            f"({class_type}); check the name and that the model file is installed"
        )
    details = str(error.get("details", ""))
    if kind == "invalid_input_type":
        return f"{message}: {info.get('exception_message') or details}"
    if kind in ("exception_during_inner_validation", "exception_during_validation"):
        cause = f"{info.get('exception_type', 'error')}: {info.get('exception_message', details)}"
        return f"bad link ({cause})"
    if kind == "required_input_missing":
        return f"required input of {class_type} is missing"
    return f"{message}: {details}" if details and details != info.get("input_name") else message


def violations_from_comfyui(
    exc: ComfyUIValidationError,
    field: str = "workflow",
    field_map: Mapping[tuple[str, str], str] | None = None,
) -> InvalidArgument:
    violations: list[FieldViolation] = []
    for node_id, node in (exc.node_errors or {}).items():
        if not isinstance(node, Mapping):
            continue
        class_type = str(node.get("class_type", ""))
        for error in node.get("errors") or []:
            if not isinstance(error, Mapping):
                continue
            input_name = str((error.get("extra_info") or {}).get("input_name") or "")
            path = f"{field}.{node_id}"
            if input_name:
                path = (field_map or {}).get(
                    (str(node_id), input_name)
                ) or f"{path}.inputs.{input_name}"
            violations.append(
                FieldViolation(
                    path, _describe(error, class_type), reason=str(error.get("type", ""))
                )
            )
    error = exc.error or {}
    if not violations:
        node = _NODE_REF.search(str(error.get("details", "")))
        path = f"{field}.{node.group(1)}" if node else field
        violations.append(
            FieldViolation(
                path, str(error.get("message") or exc), reason=str(error.get("type", ""))
            )
        )
    head = str(error.get("message") or exc)
    first = violations[0]
    return InvalidArgument(
        f"ComfyUI rejected the workflow: {head} ({first.field}: {first.description})",
        violations,
        reason="WORKFLOW_INVALID",
    )

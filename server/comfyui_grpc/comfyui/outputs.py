"""Reading output files out of ComfyUI's ``executed`` messages and history.

Output nodes use different keys: ``images`` (+ ``animated``), ``gifs``
(VideoHelperSuite, whose ``fullpath`` is a server path never exposed),
``text``. Anything shaped like a file reference is an output file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file ComfyUI reported for an output node, addressable through ``/view``."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    animated: bool = False


def files_of(node_id: str, ui_output: dict[str, Any]) -> list[OutputFile]:
    animated_flags = ui_output.get("animated")
    animated = isinstance(animated_flags, list) and bool(animated_flags) and all(animated_flags)
    files: list[OutputFile] = []
    for key, items in ui_output.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                continue
            files.append(
                OutputFile(
                    node_id=node_id,
                    filename=item["filename"],
                    subfolder=str(item.get("subfolder") or ""),
                    type=str(item.get("type") or "output"),
                    animated=animated or key == "gifs",
                )
            )
    return files


def history_entry_problem(entry: Any) -> str | None:
    """What is wrong with a ``/history/{id}`` entry's shape, or None if it is usable.

    :func:`history_outputs` and :func:`history_outcome` rely on exactly this:
    ``outputs`` an object of objects, ``status`` an object whose
    ``messages`` is a list and ``status_str`` a string.
    """
    if not isinstance(entry, dict):
        return f"the entry is a {type(entry).__name__}, not an object"
    outputs = entry.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            return f"outputs is a {type(outputs).__name__}, not an object"
        for node_id, ui_output in outputs.items():
            if not isinstance(ui_output, dict):
                return f"the output of node {node_id!r} is not an object"
    status = entry.get("status")
    if status is not None:
        if not isinstance(status, dict):
            return f"status is a {type(status).__name__}, not an object"
        if not isinstance(status.get("messages", []), list):
            return "status.messages is not a list"
        if not isinstance(status.get("status_str", ""), str):
            return "status.status_str is not a string"
    return None


def history_outputs(entry: dict[str, Any]) -> dict[str, list[OutputFile]]:
    outputs = entry.get("outputs") or {}
    result: dict[str, list[OutputFile]] = {}
    for node_id, ui_output in outputs.items():
        if isinstance(ui_output, dict):
            files = files_of(str(node_id), ui_output)
            if files:
                result[str(node_id)] = files
    return result


def history_outcome(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """('success' | 'error' | 'interrupted' | 'unknown', data of the last message)."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    last_event, last_data = "", {}
    for message in messages:
        if isinstance(message, list) and len(message) == 2:
            name, data = message
            if name in ("execution_success", "execution_error", "execution_interrupted"):
                last_event, last_data = name, data if isinstance(data, dict) else {}
    if last_event == "execution_success" or status.get("status_str") == "success":
        return "success", last_data
    if last_event == "execution_interrupted":
        return "interrupted", last_data
    if last_event == "execution_error" or status.get("status_str") == "error":
        return "error", last_data
    return "unknown", last_data

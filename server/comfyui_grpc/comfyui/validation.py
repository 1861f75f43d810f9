"""Prompt validation with ComfyUI's error types, shapes and quirks.

One piece of code for both sides: the gateway checks a graph at Generate
against a backend's ``/object_info`` (:func:`validate_against`), and the
simulator answers ``POST /prompt`` with it, where the recorded transcripts
check it. Written to behave like ComfyUI 0.3.64 as recorded in transcripts
04, 13, 16 and 17: values are coerced in place (``8`` becomes ``8.0`` for a FLOAT), a broken
link inside an upstream node is reported under that node's id but with the
downstream input's name, the node behind a mistyped link is not validated, and
outputs that fail are dropped silently when at least one output is valid.
Python exceptions (KeyError, IndexError) are allowed to happen where ComfyUI
lets them happen, so their messages match.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ComfyUIValidationError

JsonDict = dict[str, Any]
Verdict = tuple[bool, list[JsonDict], str]
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}


CustomCheck = tuple[tuple[str, ...], Callable[[Mapping[str, Any]], "bool | str"]]


class NodeSchemas(Protocol):
    """What validation needs to know of the node classes a server has."""

    def __contains__(self, class_type: object) -> bool: ...

    def input_types(self, class_type: str) -> Mapping[str, Mapping[str, Any]]: ...

    def return_types(self, class_type: str) -> Sequence[Any]: ...

    def is_output(self, class_type: str) -> bool: ...

    def custom_check(self, class_type: str) -> CustomCheck | None:
        """A node's own check of some inputs (``VALIDATE_INPUTS``), where it is known."""
        ...


def is_upload_input(spec: Any) -> bool:
    """An input whose choices are uploaded files (``image_upload``...): they change
    with every upload, so a copy of ``/object_info`` cannot judge them."""
    return (
        isinstance(spec, list)
        and len(spec) > 1
        and isinstance(spec[1], Mapping)
        and any(key.endswith("_upload") and value for key, value in spec[1].items())
    )


class ObjectInfoSchemas:
    """:class:`NodeSchemas` read from a ``/object_info`` answer (no custom checks).

    Inputs that pick an uploaded file are taken as any string: the answer may
    predate the upload, and ComfyUI checks the file when the job reaches it.
    """

    def __init__(self, object_info: Mapping[str, Any]) -> None:
        self._info = object_info

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._info

    def input_types(self, class_type: str) -> Mapping[str, Mapping[str, Any]]:
        sections = self._info[class_type].get("input")
        if not isinstance(sections, Mapping):
            return {}
        return {
            category: {
                name: ["*", {}] if is_upload_input(spec) else spec for name, spec in section.items()
            }
            if isinstance(section, Mapping)
            else {}
            for category, section in sections.items()
            if category != "hidden"
        }

    def return_types(self, class_type: str) -> Sequence[Any]:
        output = self._info[class_type].get("output")
        return output if isinstance(output, list) else []

    def is_output(self, class_type: str) -> bool:
        return bool(self._info[class_type].get("output_node"))

    def custom_check(self, class_type: str) -> CustomCheck | None:
        return None


def validate_against(
    object_info: Mapping[str, Any], prompt: Mapping[str, Any]
) -> ComfyUIValidationError | None:
    """What ComfyUI with this ``/object_info`` would answer to ``prompt``, as an error.

    A graph ComfyUI would only partly run (some outputs invalid) is an error
    too. The prompt is not changed.
    """
    copy = {
        node_id: {**node, "inputs": dict(node.get("inputs") or {})}
        if isinstance(node, Mapping)
        else node
        for node_id, node in prompt.items()
    }
    result = validate_prompt(ObjectInfoSchemas(object_info), copy)
    if not result.ok:
        error = result.error or {}
        return ComfyUIValidationError(
            str(error.get("message") or "invalid workflow"), error, result.node_errors
        )
    if result.node_errors:
        return ComfyUIValidationError("some outputs failed validation", {}, result.node_errors)
    return None


@dataclass
class ValidationResult:
    ok: bool
    error: JsonDict | None
    outputs: list[str] = field(default_factory=list)
    node_errors: JsonDict = field(default_factory=dict)


def _error(kind: str, message: str, details: str = "", extra: JsonDict | None = None) -> JsonDict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's link type check: equal, ``*`` wildcard, or overlapping unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    if "*" in got or "*" in want:
        return True
    return bool(got & want)


class _Validator:
    def __init__(self, catalog: NodeSchemas, prompt: JsonDict) -> None:
        self.catalog = catalog
        self.prompt = prompt
        self.validated: dict[str, Verdict] = {}

    def node(self, unique_id: str) -> Verdict:
        if unique_id in self.validated:
            return self.validated[unique_id]
        inputs = self.prompt[unique_id]["inputs"]
        class_type = self.prompt[unique_id]["class_type"]
        custom = self.catalog.custom_check(class_type)
        validated_inputs = custom[0] if custom is not None else ()
        sections = self.catalog.input_types(class_type)
        errors: list[JsonDict] = []
        valid = True
        declared: list[tuple[str, str]] = [
            (name, category)
            for category in ("required", "optional")
            for name in sections.get(category, {})
        ]
        for name, category in declared:
            spec = sections[category][name]
            input_type = spec[0]
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            {"input_name": name},
                        )
                    )
                continue
            value = inputs[name]
            info = [input_type, extra]
            if isinstance(value, list):
                if not self._link(unique_id, name, value, input_type, info, errors):
                    valid = False
                continue
            if name in validated_inputs:
                continue
            if not self._constant(inputs, name, value, input_type, extra, info, errors):
                continue
        if custom is not None:
            for name in validated_inputs:
                if name not in inputs or isinstance(inputs[name], list):
                    continue
                verdict = custom[1](inputs)
                if verdict is not True:
                    details = name if verdict is False else f"{name} - {verdict}"
                    errors.append(
                        _error(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            details,
                            {"input_name": name},
                        )
                    )
        result: Verdict = (
            (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        )
        self.validated[unique_id] = result
        return result

    def _link(
        self,
        unique_id: str,
        name: str,
        value: list[Any],
        input_type: Any,
        info: list[Any],
        errors: list[JsonDict],
    ) -> bool:
        """Check one linked input; False when the input makes this node invalid."""
        if len(value) != 2:
            details = f"Bad linked input, must be a length-2 list of [node_id, slot_index]: {name}"
            errors.append(
                _error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    details,
                    {"input_name": name, "input_config": info, "received_value": value},
                )
            )
            return True
        source_id = value[0]
        source_class = self.prompt[source_id]["class_type"]  # KeyError escapes, as in ComfyUI
        received = self.catalog.return_types(source_class)[value[1]]  # so may IndexError
        if not types_match(received, input_type):
            details = f"{name}, received_type({received}) mismatch input_type({input_type})"
            errors.append(
                _error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    details,
                    {
                        "input_name": name,
                        "input_config": info,
                        "received_type": received,
                        "linked_node": value,
                    },
                )
            )
            return True
        try:
            verdict = self.node(source_id)
        except Exception as exc:
            reasons = [
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(exc),
                    {
                        "input_name": name,
                        "input_config": info,
                        "exception_message": str(exc),
                        "exception_type": _type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                        "linked_node": value,
                    },
                )
            ]
            self.validated[source_id] = (False, reasons, source_id)
            return False
        return verdict[0]

    def _constant(
        self,
        inputs: JsonDict,
        name: str,
        value: Any,
        input_type: Any,
        extra: JsonDict,
        info: list[Any],
        errors: list[JsonDict],
    ) -> bool:
        """Coerce and range/combo-check a constant input in place."""
        try:
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
                inputs[name] = value
            converter = CONVERTERS.get(input_type) if isinstance(input_type, str) else None
            if converter is not None:
                value = converter(value)
                inputs[name] = value
        except Exception as exc:
            errors.append(
                _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    {
                        "input_name": name,
                        "input_config": info,
                        "received_value": value,
                        "exception_message": str(exc),
                    },
                )
            )
            return False
        payload = {"input_name": name, "input_config": info, "received_value": value}
        if "min" in extra and value < extra["min"]:
            message = f"Value {value} smaller than min of {extra['min']}"
            errors.append(_error("value_smaller_than_min", message, name, payload))
            return False
        if "max" in extra and value > extra["max"]:
            message = f"Value {value} bigger than max of {extra['max']}"
            errors.append(_error("value_bigger_than_max", message, name, payload))
            return False
        if isinstance(input_type, list) or input_type == "COMBO":
            options = extra.get("options", []) if input_type == "COMBO" else input_type
            if extra.get("multiselect") and isinstance(value, list):
                bad = [v for v in value if v not in options]
            else:
                bad = [] if value in options else [value]
            if bad:
                listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
                config = None if len(options) > 20 else info
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {listing}",
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
                return False
        return True


def validate_prompt(
    catalog: NodeSchemas, prompt: JsonDict, targets: Sequence[str] | None = None
) -> ValidationResult:
    """Validate (and coerce in place) a prompt the way POST /prompt does."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            error = _error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
            return ValidationResult(False, error)
        class_type = node["class_type"]
        if class_type not in catalog:
            error = _error(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
            return ValidationResult(False, error)
        if catalog.is_output(class_type) and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"))

    validator = _Validator(catalog, prompt)
    good: list[str] = []
    failures: list[tuple[str, list[JsonDict]]] = []
    node_errors: JsonDict = {}
    for output in outputs:
        try:
            valid, reasons, _ = validator.node(output)
        except Exception as exc:
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    {
                        "exception_type": _type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                    },
                )
            ]
            validator.validated[output] = (False, reasons, output)
        if valid:
            good.append(output)
            continue
        if reasons:
            failures.append((output, reasons))
        for node_id, (ok, node_reasons, _) in validator.validated.items():
            if ok or not node_reasons:
                continue
            if node_id not in node_errors:
                node_errors[node_id] = {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                }
            node_errors[node_id]["dependent_outputs"].append(output)

    if not good:
        details = "\n".join(
            f"{reason['message']}: {reason['details']}"
            for _, reasons in failures
            for reason in reasons
        )
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good, node_errors)

"""Template parameters: their declared types, and a caller's values checked against them.

A parameter is declared once in a template file and bound to one or more
node inputs. A caller's value is checked here (type, bounds, choices) and
every problem is reported at once as ``template.params.<name>``, so a caller
in any language learns what to fix without reading the graph.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import FieldViolation, InvalidArgument

TYPES = ("string", "int", "float", "bool", "enum", "seed", "model", "image")
MAX_SEED = 2**64 - 1
MAX_STRING_CHARS = 20_000
PARAMS_FIELD = "template.params"


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One declared parameter of a template."""

    name: str
    type: str
    description: str = ""
    required: bool = False
    default: Any = None
    """None: no default (a seed is then random, others are left as the graph has them)."""
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    """Allowed values of an ``enum``."""
    folder: str = ""
    """The model folder of a ``model`` parameter, e.g. ``loras``."""
    binds: tuple[tuple[str, str], ...] = ()
    """(node id, input name) pairs the value is written to."""


def problem_with(param: Param, value: Any) -> str | None:
    """Why ``value`` does not fit ``param``, or None when it does.

    Image values are plain file names here: the API resolves inline bytes and
    earlier artifacts to uploaded names before this check.
    """
    kind = param.type
    if kind in ("string", "model", "image", "enum"):
        if not isinstance(value, str):
            return f"must be a string (got {_kind_of(value)})"
        if len(value) > MAX_STRING_CHARS:
            return f"at most {MAX_STRING_CHARS} characters"
        if kind == "enum" and value not in param.values:
            return f"must be one of {', '.join(param.values)} (got {value[:80]!r})"
        if kind in ("model", "image") and (
            not value or "\x00" in value or value.startswith("/") or ".." in value.split("/")
        ):
            return "must be a file name as ComfyUI lists it"
        return None
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false (got {_kind_of(value)})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number (got {_kind_of(value)})"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if kind in ("int", "seed") and not float(value).is_integer():
        return f"must be a whole number (got {value:g})"
    low, high = (0.0, float(MAX_SEED)) if kind == "seed" else (param.min, param.max)
    if (low is not None and value < low) or (high is not None and value > high):
        return f"must be between {_bound(low)} and {_bound(high)} (got {value:g})"
    return None


def _bound(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def normalised(param: Param, value: Any) -> Any:
    """The value as ComfyUI wants it: whole numbers as ints for INT inputs."""
    if param.type in ("int", "seed") and isinstance(value, float):
        return int(value)
    if param.type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def resolve(
    params: tuple[Param, ...], given: Mapping[str, Any], field: str = PARAMS_FIELD
) -> dict[str, Any]:
    """Every parameter's value (given, default, or a random seed), checked.

    Raises InvalidArgument naming ``<field>.<name>`` for each unknown,
    missing or unfitting value. A parameter with no value and no default is
    left out: the graph keeps what it has.
    """
    declared = {p.name: p for p in params}
    violations = [
        FieldViolation(
            f"{field}.{name}",
            f"unknown parameter; this template takes {', '.join(declared) or 'none'}",
        )
        for name in given
        if name not in declared
    ]
    resolved: dict[str, Any] = {}
    for param in params:
        if param.name in given and given[param.name] is not None:
            value = given[param.name]
        elif param.required:
            violations.append(FieldViolation(f"{field}.{param.name}", "required"))
            continue
        elif param.default is not None:
            value = param.default
        elif param.type == "seed":
            value = secrets.randbelow(2**53)
        else:
            continue
        why = problem_with(param, value)
        if why is not None:
            violations.append(FieldViolation(f"{field}.{param.name}", why))
            continue
        resolved[param.name] = normalised(param, value)
    if violations:
        first = violations[0]
        raise InvalidArgument(
            f"invalid template parameters: {first.field}: {first.description}", violations
        )
    return resolved

"""Workflow templates: a ComfyUI API graph with named, typed parameters.

A template file (YAML or JSON) names its parameters and binds each one to
node inputs of an exported graph, so callers send ``prompt`` and ``lora``
instead of ``6.inputs.text``. Everything that can be checked without a
backend is checked here, when the file is read: a broken file is refused
with a message that says what to fix, never at the first job.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..backends.inventory import model_folder
from ..errors import InvalidArgument
from .graph import validate_graph
from .template_params import PARAMS_FIELD, TYPES, Param, problem_with

NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
OUTPUT_SUBFOLDER = "comfyui-grpc"
_TOP_LEVEL = frozenset(
    {"name", "version", "description", "parameters", "outputs", "workflow", "workflow_file"}
)
_PARAM_KEYS = frozenset(
    {"type", "description", "required", "default", "min", "max", "values", "folder", "bind"}
)

Builder = Callable[[str, Mapping[str, Any], str], dict[str, Any]]
"""(job id, resolved values, error field prefix) -> the graph to submit."""


class TemplateError(ValueError):
    """A template file that cannot be served; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    name: str
    version: int
    description: str = ""
    params: tuple[Param, ...] = ()
    outputs: tuple[str, ...] = ()
    """Node ids whose files are the job's artifacts; empty: every output node."""
    workflow: Mapping[str, Any] = field(default_factory=dict)
    source: str = "built-in"
    builder: Builder | None = None
    """Built-ins build their graph in code; file templates bind into ``workflow``."""

    @property
    def built_in(self) -> bool:
        return self.builder is not None

    def field_map(self, field: str = PARAMS_FIELD) -> dict[tuple[str, str], str]:
        """(node id, input) -> request field, so ComfyUI's complaints name the parameter."""
        return {bind: f"{field}.{p.name}" for p in self.params for bind in p.binds}

    def build(
        self, job_id: str, values: Mapping[str, Any], field: str = PARAMS_FIELD
    ) -> dict[str, Any]:
        """The graph for one job: values written to their inputs, and output
        file names under the job id (never another job's cached files)."""
        if self.builder is not None:
            return self.builder(job_id, values, field)
        graph: dict[str, Any] = copy.deepcopy(dict(self.workflow))
        bound = set()
        for param in self.params:
            if param.name not in values:
                continue
            for node_id, name in param.binds:
                graph[node_id]["inputs"][name] = values[param.name]
                bound.add((node_id, name))
        for node_id, node in graph.items():
            prefix = node["inputs"].get("filename_prefix")
            if isinstance(prefix, str) and (node_id, "filename_prefix") not in bound:
                stem = posixpath.basename(prefix.rstrip("/")) or "output"
                node["inputs"]["filename_prefix"] = f"{OUTPUT_SUBFOLDER}/{job_id}/{stem}"
        return graph


def _bind_target(text: Any, graph: Mapping[str, Any], where: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count(".inputs.") != 1:
        raise TemplateError(f"{where}: a binding is written '<node id>.inputs.<input>'")
    node_id, _, name = text.partition(".inputs.")
    node = graph.get(node_id)
    if not isinstance(node, Mapping):
        raise TemplateError(f"{where}: {text!r} names node {node_id!r}, which is not in the graph")
    inputs = node.get("inputs", {})
    if name not in inputs:
        raise TemplateError(
            f"{where}: node {node_id} ({node.get('class_type')}) has no input {name!r}; "
            f"it has {', '.join(sorted(inputs)) or 'none'}"
        )
    value = inputs[name]
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        raise TemplateError(f"{where}: {text!r} is a link to another node, not a value")
    return node_id, name


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TemplateError(f"{where}: must be a number")
    return float(value)


def parse_param(name: str, spec: Any, graph: Mapping[str, Any]) -> Param:
    where = f"parameter {name!r}"
    if not PARAM_NAME.match(name):
        raise TemplateError(f"{where}: names are letters, digits and _ (at most 64)")
    if not isinstance(spec, Mapping):
        raise TemplateError(f"{where}: must be a mapping with type and bind")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise TemplateError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise TemplateError(f"{where}: type must be one of {', '.join(TYPES)} (got {kind!r})")
    raw_binds = spec.get("bind")
    if isinstance(raw_binds, str):
        raw_binds = [raw_binds]
    if not isinstance(raw_binds, list) or not raw_binds:
        raise TemplateError(f"{where}: bind must list at least one '<node id>.inputs.<input>'")
    binds = tuple(_bind_target(b, graph, where) for b in raw_binds)
    values = spec.get("values", [])
    if kind == "enum" and (
        not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values)
    ):
        raise TemplateError(f"{where}: an enum needs values, a list of strings")
    folder = spec.get("folder") or ""
    if kind == "model" and not folder:
        node_id, input_name = binds[0]
        folder = model_folder(str(graph[node_id].get("class_type")), input_name) or ""
        if not folder:
            raise TemplateError(f"{where}: a model parameter needs folder (e.g. loras)")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise TemplateError(f"{where}: required must be true or false")
    description = spec.get("description", "")
    param = Param(
        name=name,
        type=kind,
        description=str(description),
        required=required,
        default=spec.get("default"),
        min=_number(spec.get("min"), f"{where}: min"),
        max=_number(spec.get("max"), f"{where}: max"),
        values=tuple(values) if kind == "enum" else (),
        folder=str(folder),
        binds=binds,
    )
    if param.min is not None and param.max is not None and param.min > param.max:
        raise TemplateError(f"{where}: min {param.min:g} is above max {param.max:g}")
    if param.default is not None:
        why = problem_with(param, param.default)
        if why is not None:
            raise TemplateError(f"{where}: default {param.default!r} does not fit: {why}")
    return param


def _graph(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    if "workflow" in data and "workflow_file" in data:
        raise TemplateError("give workflow or workflow_file, not both")
    if "workflow_file" in data:
        path = base / str(data["workflow_file"])
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TemplateError(f"workflow_file {data['workflow_file']!r}: {exc}") from exc
    else:
        graph = data.get("workflow")
    if not isinstance(graph, dict) or not graph:
        raise TemplateError("workflow must be ComfyUI's API-format graph (a mapping of nodes)")
    if "nodes" in graph and "links" in graph:
        raise TemplateError(
            "the workflow is in ComfyUI's UI format (it has nodes and links); "
            'in ComfyUI use Workflow > "Export (API)" and use that file'
        )
    graph = {str(k): v for k, v in graph.items()}
    try:
        validate_graph(graph, "workflow")
    except InvalidArgument as exc:
        raise TemplateError(str(exc)) from exc
    return graph


def parse_template(data: Any, *, source: str, base: Path) -> Template:
    """A template from a file's parsed contents; TemplateError says what is wrong."""
    if not isinstance(data, Mapping):
        raise TemplateError("a template file is a mapping with name, version, parameters, workflow")
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise TemplateError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = data.get("name")
    if not isinstance(name, str) or len(name) > 64 or not NAME.match(name):
        raise TemplateError(f"name must be lowercase letters, digits and dashes (got {name!r})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise TemplateError(f"version must be a whole number >= 1 (got {version!r})")
    graph = _graph(data, base)
    raw_params = data.get("parameters") or {}
    if not isinstance(raw_params, Mapping):
        raise TemplateError("parameters must be a mapping of name to its declaration")
    params = tuple(parse_param(str(n), spec, graph) for n, spec in raw_params.items())
    raw_outputs = data.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise TemplateError("outputs must be a list of node ids")
    outputs = tuple(str(o) for o in raw_outputs)
    missing = [o for o in outputs if o not in graph]
    if missing:
        raise TemplateError(f"outputs name node(s) {', '.join(missing)}, not in the graph")
    return Template(
        name=name,
        version=version,
        description=str(data.get("description") or ""),
        params=params,
        outputs=outputs,
        workflow=graph,
        source=source,
    )


def is_template_file(path: Path) -> bool:
    """YAML and JSON files, except ``*.api.json`` (graphs a template points at)."""
    name = path.name
    if name.startswith(".") or name.endswith(".api.json"):
        return False
    return path.suffix in (".yaml", ".yml", ".json")


def load_file(path: Path) -> Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read it: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TemplateError(f"not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    return parse_template(data, source=str(path), base=path.parent)

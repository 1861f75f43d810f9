"""Template files: what is refused at load, with a message that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from comfyui_grpc.errors import InvalidArgument
from comfyui_grpc.workflows.template_files import TemplateError, load_file, parse_template
from comfyui_grpc.workflows.template_library import TemplateLibrary
from comfyui_grpc.workflows.template_params import resolve

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def doc(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "version": 1,
        "parameters": {"prompt": {"type": "string", "required": True, "bind": ["2.inputs.text"]}},
        "workflow": GRAPH,
    }
    data.update(overrides)
    return data


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(TemplateError) as caught:
        parse_template(data, source="t.yaml", base=Path("."))
    return str(caught.value)


def test_ui_format_is_refused_with_export_advice() -> None:
    why = refused(doc(workflow={"nodes": [], "links": [], "version": 0.4}))
    assert "Export (API)" in why


def test_bindings_must_name_existing_nodes_and_inputs() -> None:
    assert "not in the graph" in refused(
        doc(parameters={"p": {"type": "string", "bind": ["9.inputs.text"]}})
    )
    assert "has no input 'txt'" in refused(
        doc(parameters={"p": {"type": "string", "bind": ["2.inputs.txt"]}})
    )
    assert "link" in refused(doc(parameters={"p": {"type": "string", "bind": ["2.inputs.clip"]}}))


def test_defaults_must_fit_their_bounds_and_types() -> None:
    steps = {"type": "int", "default": 100, "min": 1, "max": 80, "bind": ["2.inputs.text"]}
    assert "does not fit" in refused(doc(parameters={"steps": steps}))
    choice = {"type": "enum", "values": ["a"], "default": "b", "bind": ["2.inputs.text"]}
    assert "does not fit" in refused(doc(parameters={"c": choice}))
    assert "type must be one of" in refused(
        doc(parameters={"c": {"type": "colour", "bind": ["2.inputs.text"]}})
    )


def test_names_versions_outputs_and_unknown_keys() -> None:
    assert "lowercase" in refused(doc(name="Bad_Name"))
    assert "version" in refused(doc(version="3"))
    assert "not in the graph" in refused(doc(outputs=["7"]))
    assert "unknown key" in refused(doc(workfow={}))


def test_params_resolve_defaults_seeds_and_every_mistake() -> None:
    template = parse_template(
        doc(
            parameters={
                "prompt": {"type": "string", "required": True, "bind": ["2.inputs.text"]},
                "seed": {"type": "seed", "bind": ["2.inputs.text"]},
                "n": {"type": "int", "default": 2, "min": 1, "max": 4, "bind": ["2.inputs.text"]},
            }
        ),
        source="t",
        base=Path("."),
    )
    values = resolve(template.params, {"prompt": "x", "n": 3.0})
    assert values["n"] == 3
    assert isinstance(values["n"], int)
    assert 0 <= values["seed"] < 2**53
    with pytest.raises(InvalidArgument) as caught:
        resolve(template.params, {"n": 9, "other": 1})
    fields = sorted(v.field for v in caught.value.violations)
    assert fields == ["template.params.n", "template.params.other", "template.params.prompt"]


def test_build_binds_values_and_puts_outputs_under_the_job(tmp_path: Path) -> None:
    (tmp_path / "g.api.json").write_text(json.dumps(GRAPH))
    data = doc(workflow_file="g.api.json")
    del data["workflow"]
    (tmp_path / "t.json").write_text(json.dumps(data))
    template = load_file(tmp_path / "t.json")
    graph = template.build("job-1", {"prompt": "a fox"})
    assert graph["2"]["inputs"]["text"] == "a fox"
    assert graph["3"]["inputs"]["filename_prefix"] == "comfyui-grpc/job-1/x"
    assert template.workflow["2"]["inputs"]["text"] == ""  # the template is unchanged


def test_a_broken_file_is_skipped_and_others_serve(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(doc(name="good")))
    (tmp_path / "bad.yaml").write_text("name: bad\nversion: [")
    library = TemplateLibrary(str(tmp_path))
    library.reload()
    assert [t.name for t in library.all()] == ["good", "text-to-image", "video"]

"""Workflow templates over the API: the example templates on the simulator, via grpcurl."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from PIL import Image
from testkit import gateway_settings

from .test_grpcurl import SERVICE, grpcurl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"


@pytest.fixture
async def templated(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    directory = tmp_path / "templates"
    shutil.copytree(EXAMPLES, directory)
    gw = Gateway(
        gateway_settings(
            tmp_path, simulator.url, templates_dir=str(directory), templates_reload_seconds=0.1
        )
    )
    await gw.start()
    try:
        assert await gw.wait_backends(10.0)
        yield gw
    finally:
        await gw.stop(grace=1.0)


async def call(gateway: Gateway, method: str, data: dict[str, Any]) -> dict[str, Any]:
    code, out, err = await grpcurl(gateway, f"{SERVICE}/{method}", data=json.dumps(data))
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


NOT_FOUND, INVALID_ARGUMENT = 5, 3


async def refused(gateway: Gateway, method: str, data: dict[str, Any]) -> dict[str, Any]:
    """The status grpcurl printed, with the field violations it carried under "fields"."""
    code, out, err = await grpcurl(
        gateway,
        f"{SERVICE}/{method}",
        data=json.dumps(data),
        flags=("-plaintext", "-format-error"),
    )
    assert code != 0, out
    text = out + err  # grpcurl prints the status on stderr
    status: dict[str, Any] = json.loads(text[text.index("{") :])
    status["fields"] = [
        v["field"] for d in status.get("details", []) for v in d.get("field_violations", [])
    ]
    return status


async def run(gateway: Gateway, name: str, params: dict[str, Any]) -> dict[str, Any]:
    started = await call(gateway, "Generate", {"template": {"name": name, "params": params}})
    done = await call(gateway, "GetResult", {"job_id": started["job_id"], "wait_timeout": "60s"})
    job: dict[str, Any] = done["job"]
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    return job


def png(width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_templates_are_listed_with_their_parameters(templated: Gateway) -> None:
    listed = await call(templated, "ListTemplates", {})
    names = [t["name"] for t in listed["templates"]]
    assert names == ["image-to-image", "sdxl-lora", "text-to-image", "video"]
    lora = await call(templated, "GetTemplate", {"name": "sdxl-lora"})
    assert lora["runnable"] is True
    assert lora["outputs"] == ["9"]
    params = {p["name"]: p for p in lora["parameters"]}
    assert params["prompt"]["required"] is True
    assert params["prompt"]["type"] == ("PARAMETER_TYPE_STRING")
    assert params["steps"]["min"] == 1
    assert params["steps"]["max"] == 80
    assert params["steps"]["default_value"] == 25
    assert params["sampler"]["values"] == ["euler", "euler_ancestral", "dpmpp_2m"]
    # A model parameter offers the files the fleet has, from the backends' inventory.
    assert params["lora"]["folder"] == "loras"
    assert params["lora"]["values"] == ["detail.safetensors", "watercolor.safetensors"]
    builtin = await call(templated, "GetTemplate", {"name": "text-to-image"})
    assert builtin["built_in"] is True
    err = await refused(templated, "GetTemplate", {"name": "nope"})
    assert err["code"] == NOT_FOUND


async def test_generate_stores_only_the_listed_outputs(templated: Gateway) -> None:
    job = await run(
        templated, "sdxl-lora", {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64}
    )
    # The graph also has a PreviewImage (node 11): only node 9 is an artifact.
    assert [a["node_id"] for a in job["artifacts"]] == ["9"]
    assert job["template"] == "sdxl-lora"
    assert job["template_version"] == 1
    used = job["template_params"]
    assert used["prompt"] == "a red fox"
    assert used["lora"] == "detail.safetensors"
    assert isinstance(used["seed"], int | float)  # the random seed it used is recorded
    store = templated.store
    manifest = json.loads(await store.get_bytes(store.manifest_key(job["job_id"])))
    assert manifest["template"]["name"] == "sdxl-lora"
    assert manifest["template"]["params"]["seed"] == used["seed"]


async def test_parameter_mistakes_name_the_parameter(templated: Gateway) -> None:
    cases = [
        ({"steps": 3}, "template.params.prompt"),
        ({"prompt": "x", "steps": 500}, "template.params.steps"),
        ({"prompt": "x", "colour": "red"}, "template.params.colour"),
        ({"prompt": "x", "sampler": "nope"}, "template.params.sampler"),
    ]
    for params, field in cases:
        err = await refused(
            templated, "Generate", {"template": {"name": "sdxl-lora", "params": params}}
        )
        assert err["code"] == INVALID_ARGUMENT, err
        assert err["fields"] == [field], err
    err = await refused(templated, "Generate", {"template": {"name": "sdxl-lora", "version": 7}})
    assert err["code"] == NOT_FOUND


async def test_image_parameter_as_inline_bytes_and_as_an_earlier_artifact(
    templated: Gateway,
) -> None:
    params = {"prompt": "a watercolor", "steps": 2, "width": 64, "height": 64}
    inline = {"bytes": base64.b64encode(png()).decode()}
    first = await run(templated, "image-to-image", {**params, "image": inline})
    assert [a["node_id"] for a in first["artifacts"]] == ["9"]
    assert first["template_params"]["image"].startswith("comfyui-grpc-")
    # Chaining: the first job's output is the second job's input.
    key = first["artifacts"][0]["key"]
    chained = {"artifact": {"job_id": first["job_id"], "key": key}}
    second = await run(templated, "image-to-image", {**params, "image": chained})
    assert second["artifacts"][0]["sha256"] != first["artifacts"][0]["sha256"]
    err = await refused(
        templated,
        "Generate",
        {"template": {"name": "image-to-image", "params": {**params, "image": {"bytes": "%%"}}}},
    )
    assert err["fields"] == ["template.params.image"]


async def test_list_models_names_the_backends(templated: Gateway, simulator: Simulator) -> None:
    listed = await call(templated, "ListModels", {})
    folders = {f["name"]: f["files"] for f in listed["folders"]}
    checkpoints = {f["name"]: f["backends"] for f in folders["checkpoints"]}
    assert set(checkpoints) == set(simulator.checkpoints)
    assert all(b == [simulator.url] for b in checkpoints.values())
    motion = [f["name"] for f in folders["animatediff_models"]]
    assert motion == list(simulator.motion_modules)
    only = await call(templated, "ListModels", {"folder": "loras"})
    assert [f["name"] for f in only["folders"]] == ["loras"]


SLOW = """
name: slow
version: {version}
parameters:
  steps: {{type: int, default: 2, min: 1, max: 100, bind: ["2.inputs.steps"]}}
outputs: ["3"]
workflow:
  "1": {{class_type: EmptyImage, inputs: {{width: {width}, height: 64, batch_size: 1, color: 0}}}}
  "2": {{class_type: TestSlowProgress, inputs: {{image: ["1", 0], steps: 2, seconds_per_step: 0.05}}}}
  "3": {{class_type: SaveImage, inputs: {{images: ["2", 0], filename_prefix: slow}}}}
"""


async def until(gateway: Gateway, condition: Any) -> None:
    """Wait (bounded) for the gateway's watcher to read the directory until ``condition``."""
    library = gateway.templates
    async with asyncio.timeout(10):
        while not condition():
            await library.reloaded_past(library.reloads)


def write(path: Path, text: str) -> None:
    """Replace a file at once (as a ConfigMap update does), never half-written."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    partial.replace(path)


async def test_an_edit_serves_new_jobs_and_running_ones_keep_their_version(
    templated: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    path = Path(templated.settings.templates_dir) / "slow.yaml"
    write(path, SLOW.format(version=1, width=64))
    await until(templated, lambda: "slow" in {t.name for t in templated.templates.all()})
    first = await call(
        templated, "Generate", {"template": {"name": "slow", "params": {"steps": 30}}}
    )
    write(path, SLOW.format(version=2, width=32))
    await until(templated, lambda: templated.templates.get("slow").version == 2)
    second = await run(templated, "slow", {"steps": 1})
    assert second["template_version"] == 2
    done = await call(templated, "GetResult", {"job_id": first["job_id"], "wait_timeout": "60s"})
    old = done["job"]
    assert old["state"] == "JOB_STATE_SUCCEEDED"
    assert old["template_version"] == 1
    old_png = await templated.store.get_bytes(old["artifacts"][0]["key"])
    new_png = await templated.store.get_bytes(second["artifacts"][0]["key"])
    assert Image.open(io.BytesIO(old_png)).size == (64, 64)  # the graph of version 1
    assert Image.open(io.BytesIO(new_png)).size == (32, 64)

    # A broken edit: version 2 keeps serving, and the log says why.
    reloads = templated.templates.reloads
    write(path, "name: slow\nversion: 3\nworkflow: {nodes: [], links: []}\n")
    await until(templated, lambda: templated.templates.reloads > reloads)
    assert templated.templates.get("slow").version == 2
    assert any(
        "still serving slow version 2" in r.getMessage() and "Export (API)" in r.getMessage()
        for r in caplog.records
    )

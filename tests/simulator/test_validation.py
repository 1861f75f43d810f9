"""Validation cases beyond the recorded ones, checked against ComfyUI's rules."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from comfyui_grpc.simulator import Simulator
from simclient import SimClient, slow_prompt, txt2img_prompt


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(f"{url}/prompt", json=body) as resp:
        return (
            resp.status,
            await resp.json() if resp.content_type == "application/json" else await resp.text(),
        )


def node_error_types(body: dict[str, Any]) -> dict[str, list[str]]:
    return {n: [e["type"] for e in v["errors"]] for n, v in body["node_errors"].items()}


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"steps": 100001}, "value_bigger_than_max", "Value 100001 bigger than max of 100000"),
        ({"steps": -1}, "value_smaller_than_min", "Value -1 smaller than min of 0"),
        (
            {"seconds_per_step": "x"},
            "invalid_input_type",
            "Failed to convert an input value to a FLOAT value",
        ),
        ({"image": ["1", 0, 0]}, "bad_linked_input", None),
    ],
)
async def test_constant_checks(
    simulator: Simulator,
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    kind: str,
    message: str | None,
) -> None:
    prompt = slow_prompt()
    prompt["2"]["inputs"].update(change)
    status, body = await post(http, simulator.url, {"prompt": prompt})
    assert status == 400
    assert node_error_types(body) == {"2": [kind]}
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3"]
    if message:
        assert body["node_errors"]["2"]["errors"][0]["message"] == message


async def test_values_are_coerced_in_place(simulator: Simulator, client: SimClient) -> None:
    prompt = slow_prompt()
    prompt["2"]["inputs"]["steps"] = 2.9  # INT: int() truncates
    prompt["2"]["inputs"]["seconds_per_step"] = 0  # FLOAT: becomes 0.0
    prompt_id = await client.run(prompt)
    stored = (await client.history(prompt_id))["prompt"][2]["2"]["inputs"]
    assert stored["steps"] == 2
    assert isinstance(stored["steps"], int)
    assert stored["seconds_per_step"] == 0.0
    assert isinstance(stored["seconds_per_step"], float)


async def test_unknown_checkpoint_lists_installed_ones(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    prompt = txt2img_prompt()
    prompt["1"]["inputs"]["ckpt_name"] = "nope.safetensors"
    status, body = await post(http, simulator.url, {"prompt": prompt})
    assert status == 400
    error = body["node_errors"]["1"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert error["extra_info"]["input_config"][0] == sorted(simulator.checkpoints)


async def test_checkpoints_are_configurable(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    async with Simulator(
        output_dir=tmp_path, checkpoints=["mine.safetensors"], motion_modules=[]
    ) as sim:
        async with http.get(f"{sim.url}/models/checkpoints") as resp:
            assert await resp.json() == ["mine.safetensors"]
        async with http.get(f"{sim.url}/object_info/CheckpointLoaderSimple") as resp:
            spec = (await resp.json())["CheckpointLoaderSimple"]
            assert spec["input"]["required"]["ckpt_name"][0] == ["mine.safetensors"]
        prompt = txt2img_prompt()
        prompt["1"]["inputs"]["ckpt_name"] = "mine.safetensors"
        status, _ = await post(http, sim.url, {"prompt": prompt})
        assert status == 200


async def test_partial_execution_targets(simulator: Simulator, client: SimClient) -> None:
    prompt = slow_prompt()
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    prompt_id = (await client.submit(prompt, partial_execution_targets=["4"]))["prompt_id"]
    await client.wait_done(prompt_id)
    entry = await client.history(prompt_id)
    assert entry["prompt"][4] == ["4"]
    assert list(entry["outputs"]) == ["4"]


async def test_number_front_and_prompt_id(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    prompt = slow_prompt(steps=0)
    _, first = await post(http, simulator.url, {"prompt": prompt})
    _, front = await post(http, simulator.url, {"prompt": prompt, "front": True})
    _, explicit = await post(http, simulator.url, {"prompt": prompt, "number": 5, "prompt_id": 42})
    _, rejected = await post(http, simulator.url, {"prompt": {}})
    _, after = await post(http, simulator.url, {"prompt": prompt})
    assert (first["number"], front["number"], explicit["number"]) == (0, -1, 5.0)
    assert isinstance(explicit["number"], float)
    assert explicit["prompt_id"] == "42"
    assert rejected["error"]["type"] == "prompt_no_outputs"
    assert after["number"] == 3  # the rejected prompt consumed 2, the explicit one nothing
    assert simulator.submitted_prompt_ids == [
        first["prompt_id"],
        front["prompt_id"],
        "42",
        after["prompt_id"],
    ]


async def test_sensitive_extra_data_is_not_kept(simulator: Simulator, client: SimClient) -> None:
    extra = {"api_key_comfy_org": "secret", "mine": 1}
    prompt_id = await client.run(slow_prompt(steps=0), extra_data=extra)
    stored = (await client.history(prompt_id))["prompt"][3]
    assert stored == {"mine": 1, "client_id": client.client_id}


async def test_equal_number_and_id_with_other_prompt_is_500_after_queueing(
    simulator: Simulator, client: SimClient
) -> None:
    # ComfyUI compares queue items as tuples; equal number and id fall through to
    # comparing the prompt dicts, which fails after the item was already queued.
    simulator.faults.time_scale = 1.0
    blocker = await client.submit(slow_prompt(steps=20, seconds=0.5))
    await client.wait_for(
        lambda m: m["type"] == "execution_start" and m["data"]["prompt_id"] == blocker["prompt_id"]
    )
    await client.submit(slow_prompt(prefix="t/a"), number=1, prompt_id="same")
    body = {
        "prompt": slow_prompt(prefix="t/b"),
        "number": 1,
        "prompt_id": "same",
        "client_id": client.client_id,
    }
    async with client.http.post(f"{client.url}/prompt", json=body) as resp:
        assert resp.status == 500
    queue = await client.get_json("/queue")
    assert [item[1] for item in queue["queue_pending"]] == ["same", "same"]
    async with client.http.post(f"{client.url}/interrupt", json={}) as resp:
        assert resp.status == 200

"""Execution order and cache keys follow ComfyUI's rules (see graph.py)."""

from __future__ import annotations

from typing import Any

from comfyui_grpc.simulator.graph import ExecutionOrder, cache_keys
from simclient import txt2img_prompt

OUTPUTS = {"SaveImage", "PreviewImage", "VHS_VideoCombine"}


def order_of(
    prompt: dict[str, Any], outputs: list[str], cached: set[str] = frozenset()
) -> list[str]:  # type: ignore[assignment]
    order = ExecutionOrder(
        prompt, lambda n: prompt[n]["class_type"] in OUTPUTS, lambda n: n in cached
    )
    for output in outputs:
        order.add(output)
    seen = []
    while not order.empty():
        node = order.next()
        seen.append(node)
        order.done(node)
    return seen


def test_txt2img_runs_loader_latent_then_prompts_like_comfyui() -> None:
    assert order_of(txt2img_prompt(), ["7"]) == ["1", "4", "3", "2", "5", "6", "7"]  # transcript 15


def test_cached_inputs_are_not_scheduled() -> None:
    assert order_of(txt2img_prompt(), ["7"], cached={"1", "2", "3", "4"}) == ["5", "6", "7"]


def test_output_node_runs_as_soon_as_it_can() -> None:
    prompt = txt2img_prompt()
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    prompt["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}
    # Ready outputs first, then nodes feeding an output, then two links away, else visit order.
    assert order_of(prompt, ["10", "7", "8"]) == ["1", "4", "3", "2", "5", "9", "10", "6", "7", "8"]


def keys(prompt: dict[str, Any]) -> dict[str, Any]:
    return cache_keys(prompt, lambda n: None, lambda n: False)


def test_cache_keys_follow_inputs_recursively_not_ids() -> None:
    first = keys(txt2img_prompt(seed=1))
    renumbered = {
        str(int(k) + 10): {
            "class_type": v["class_type"],
            "inputs": {
                name: [str(int(x[0]) + 10), x[1]] if isinstance(x, list) else x
                for name, x in v["inputs"].items()
            },
        }
        for k, v in txt2img_prompt(seed=1).items()
    }
    assert keys(renumbered)["17"] == first["7"]
    other_seed = keys(txt2img_prompt(seed=2))
    assert other_seed["4"] == first["4"]
    assert other_seed["1"] == first["1"]
    assert other_seed["5"] != first["5"]
    assert other_seed["7"] != first["7"]


def test_same_node_twice_differs_from_two_equal_nodes() -> None:
    shared = txt2img_prompt()
    shared["5"]["inputs"]["negative"] = ["2", 0]
    twin = txt2img_prompt()
    twin["3"]["inputs"]["text"] = twin["2"]["inputs"]["text"]
    assert keys(shared)["5"] != keys(twin)["5"]


def test_link_to_missing_node_is_never_cached() -> None:
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"images": ["99", 0]}}}
    assert keys(prompt)["1"] != keys(prompt)["1"]

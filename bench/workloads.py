"""The workflows the benchmark submits, all built from nodes the simulator knows."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.workflows import TextToImageParams, text_to_image_graph

Graph = dict[str, Any]

SUBMIT_JOB_ID = "00000000-0000-4000-8000-000000000000"
"""Only names the output prefix of the submission graph; every call gets its own prompt id."""


def submission_graph() -> Graph:
    """The graph the gateway's typed text-to-image request builds (64x64, 3 steps)."""
    params = TextToImageParams(prompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=7)
    return text_to_image_graph(SUBMIT_JOB_ID, params)


def typed_request() -> pb.GenerateRequest:
    """The same job through the gateway's typed API (the gateway builds the graph)."""
    return pb.GenerateRequest(
        text_to_image=pb.TextToImage(
            prompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=7
        )
    )


def workflow_request(graph: Graph) -> pb.GenerateRequest:
    return pb.GenerateRequest(workflow_json=json.dumps(graph))


_salt = itertools.count(1)


def unique_color() -> int:
    """A fresh EmptyImage colour, so ComfyUI's cache never skips a node."""
    return next(_salt) % 0xFFFFFF


def slow_graph(
    steps: int, seconds_per_step: float, prefix: str = "bench", *, send_preview: bool = False
) -> Graph:
    """EmptyImage -> TestSlowProgress -> SaveImage: one ``progress`` per step.

    Each graph gets its own image colour: identical inputs would be served
    from ComfyUI's execution cache, with no progress at all.
    """
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()},
        },
        "2": {
            "class_type": "TestSlowProgress",
            "inputs": {
                "image": ["1", 0],
                "steps": steps,
                "seconds_per_step": seconds_per_step,
                "send_preview": send_preview,  # a 64x64 JPEG preview frame per step
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def tiny_graph(prefix: str) -> Graph:
    """The cheapest job with one output file: an 8x8 image saved (never cached)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def preview_graph() -> Graph:
    """A job with no output file: EmptyImage -> PreviewAny (never cached)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()},
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


async def hold(client: httpx.AsyncClient, comfyui_url: str, seconds: float = 3600.0) -> str:
    """Queue a gate prompt (no client id) that keeps the simulator's worker busy.

    Everything submitted afterwards waits in the queue until :func:`release`.
    """
    response = await client.post(
        f"{comfyui_url}/prompt", json={"prompt": slow_graph(1, seconds, "gate")}, timeout=30
    )
    response.raise_for_status()
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


async def release(client: httpx.AsyncClient, comfyui_url: str, gate_id: str) -> None:
    """End the gate prompt, whether it is running yet or still waiting its turn."""
    for _ in range(100):
        queue = (await client.get(f"{comfyui_url}/queue", timeout=30)).json()
        running = {item[1] for item in queue["queue_running"]}
        pending = {item[1] for item in queue["queue_pending"]}
        if gate_id in pending:
            await client.post(f"{comfyui_url}/queue", json={"delete": [gate_id]}, timeout=30)
        elif gate_id in running:
            await client.post(f"{comfyui_url}/interrupt", json={"prompt_id": gate_id}, timeout=30)
        else:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the gate prompt {gate_id} could not be ended")


async def clear_queue(client: httpx.AsyncClient, comfyui_url: str) -> None:
    """Drop every waiting prompt (the running one, a gate, stays)."""
    response = await client.post(f"{comfyui_url}/queue", json={"clear": True}, timeout=60)
    response.raise_for_status()


async def queue_remaining(client: httpx.AsyncClient, comfyui_url: str) -> int:
    response = await client.get(f"{comfyui_url}/prompt", timeout=30)
    response.raise_for_status()
    return int(response.json()["exec_info"]["queue_remaining"])

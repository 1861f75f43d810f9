"""A small ComfyUI client for simulator tests: HTTP calls plus one WebSocket.

Waits are on real messages with a timeout, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

TIMEOUT = 10.0
Message = dict[str, Any]


def slow_prompt(
    steps: int = 2, seconds: float = 0.0, prefix: str = "t/slow", color: int = 1
) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "TestSlowProgress",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def txt2img_prompt(
    seed: int = 1, steps: int = 2, size: int = 64, prefix: str = "t/img", batch: int = 1
) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
        },
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": batch},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def video_prompt(
    frames: int = 8, fmt: str = "video/h264-mp4", fps: float = 8, prefix: str = "t/vid"
) -> dict[str, Any]:
    prompt = txt2img_prompt(size=64, batch=frames)
    del prompt["7"]
    prompt["8"] = {
        "class_type": "VHS_VideoCombine",
        "inputs": {
            "images": ["6", 0],
            "frame_rate": fps,
            "loop_count": 0,
            "filename_prefix": prefix,
            "format": fmt,
            "pingpong": False,
            "save_output": True,
        },
    }
    return prompt


class SimClient:
    """HTTP helpers and a message log for one socket of one client id."""

    def __init__(self, http: aiohttp.ClientSession, url: str, client_id: str | None = None) -> None:
        self.http = http
        self.url = url
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:8]}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.messages: list[Message] = []
        self.binary: list[bytes] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> SimClient:
        self.ws = await self.http.ws_connect(f"{self.url}/ws", params={"clientId": self.client_id})
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(frame.data))
            elif frame.type == aiohttp.WSMsgType.BINARY:
                self.binary.append(frame.data)
            self._changed.set()
        self._changed.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    @property
    def closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = TIMEOUT
    ) -> Message:
        """The first message (already received or coming) that matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if self.closed:
                raise AssertionError(f"socket closed; got {[m['type'] for m in self.messages]}")
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out; got {[m['type'] for m in self.messages][-10:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        assert self._reader is not None
        assert self.ws is not None
        await asyncio.wait_for(self._reader, timeout)
        return self.ws.close_code

    async def wait_done(self, prompt_id: str) -> Message:
        """Wait for ``executing(null)`` of the prompt."""
        return await self.wait_for(
            lambda m: (
                m["type"] == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            )
        )

    def of(self, prompt_id: str) -> list[Message]:
        return [m for m in self.messages if m["data"].get("prompt_id") == prompt_id]

    async def submit(self, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"prompt": prompt, "client_id": self.client_id, **extra}
        async with self.http.post(f"{self.url}/prompt", json=body) as resp:
            assert resp.status == 200, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    async def run(self, prompt: dict[str, Any], **extra: Any) -> str:
        """Submit and wait until it finished; returns the prompt id."""
        prompt_id = str((await self.submit(prompt, **extra))["prompt_id"])
        await self.wait_done(prompt_id)
        return prompt_id

    async def get_json(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as resp:
            assert resp.status == 200, f"{path}: {resp.status}"
            return await resp.json()

    async def history(self, prompt_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = (await self.get_json(f"/history/{prompt_id}"))[prompt_id]
        return entry

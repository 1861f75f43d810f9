"""Sampler previews: sent only with a preview method, in the frame format the
client negotiated, after (type 1) or before (type 4) their step's progress."""

from __future__ import annotations

import io
import json
import struct

import aiohttp
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.simulator.cli import build_parser, simulator_from_args
from PIL import Image
from simclient import TIMEOUT, SimClient, txt2img_prompt

FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


async def _run_recording(
    http: aiohttp.ClientSession, url: str, negotiate: bool
) -> tuple[list[str], list[bytes]]:
    """One txt2img run: the order of its progress and binary frames, and the frames."""
    order: list[str] = []
    frames: list[bytes] = []
    async with http.ws_connect(f"{url}/ws", params={"clientId": "recorder"}) as ws:
        if negotiate:
            await ws.send_str(json.dumps(FLAGS))
        body = {"prompt": txt2img_prompt(steps=3, size=128), "client_id": "recorder"}
        async with http.post(f"{url}/prompt", json=body) as resp:
            assert resp.status == 200
        while True:
            frame = await ws.receive(timeout=TIMEOUT)
            if frame.type == aiohttp.WSMsgType.BINARY:
                frames.append(frame.data)
                order.append(f"binary{struct.unpack_from('>I', frame.data)[0]}")
                continue
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            message = json.loads(frame.data)
            if message["type"] == "progress":
                order.append("progress")
            if message["type"] == "executing" and message["data"]["node"] is None:
                return order, frames


@pytest.mark.parametrize("negotiate", [False, True], ids=["type1", "type4"])
async def test_ksampler_sends_a_preview_per_step_with_a_preview_method(
    http: aiohttp.ClientSession, negotiate: bool
) -> None:
    args = build_parser().parse_args(["--preview-method", "auto", "--step-seconds", "0"])
    sim = simulator_from_args(args)
    await sim.start()
    try:
        order, frames = await _run_recording(http, sim.url, negotiate)
    finally:
        await sim.close()
    if negotiate:
        assert order == ["binary4", "progress"] * 3
        size = struct.unpack_from(">I", frames[0], 4)[0]
        meta = json.loads(frames[0][8 : 8 + size])
        assert (meta["node_id"], meta["image_type"]) == ("5", "image/jpeg")
        image = frames[0][8 + size :]
    else:
        assert order == ["progress", "binary1"] * 3
        assert frames[0][4:8] == b"\x00\x00\x00\x01"  # JPEG
        image = frames[0][8:]
    with Image.open(io.BytesIO(image)) as picture:
        assert picture.size == (16, 16)  # latent size: 128 / 8


async def test_ksampler_sends_no_previews_by_default(
    simulator: Simulator, client: SimClient
) -> None:
    assert simulator.preview_method == "none"
    await client.run(txt2img_prompt(steps=3))
    assert client.binary == []


def test_an_unknown_preview_method_is_refused() -> None:
    with pytest.raises(ValueError, match="preview_method"):
        Simulator(preview_method="fast")

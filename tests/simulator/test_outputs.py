"""Outputs are real files of the requested size, frame count and rate, served by /view."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
import pytest
from comfyui_grpc.simulator import Simulator
from PIL import Image
from simclient import SimClient, txt2img_prompt, video_prompt


async def fetch(
    client: SimClient, entry: dict[str, Any], **headers: str
) -> tuple[int, dict[str, str], bytes]:
    params = {"filename": entry["filename"], "subfolder": entry["subfolder"], "type": entry["type"]}
    async with client.http.get(f"{client.url}/view", params=params, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def saved(
    client: SimClient, prompt: dict[str, Any], node: str, key: str = "images"
) -> list[dict[str, Any]]:
    prompt_id = await client.run(prompt)
    entry = await client.history(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    result: list[dict[str, Any]] = entry["outputs"][node][key]
    return result


async def test_save_image_png_size_and_seed_determinism(client: SimClient) -> None:
    first = await saved(client, txt2img_prompt(seed=5, size=96, batch=2, prefix="a/x"), "7")
    assert [e["filename"] for e in first] == ["x_00001_.png", "x_00002_.png"]
    assert {e["subfolder"] for e in first} == {"a"}
    status, headers, data = await fetch(client, first[0])
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (96, 96)
    _, _, other_item = await fetch(client, first[1])
    assert other_item != data  # batch items differ
    same_seed = await saved(client, txt2img_prompt(seed=5, size=96, batch=2, prefix="b/x"), "7")
    assert (await fetch(client, same_seed[0]))[2] == data
    new_seed = await saved(client, txt2img_prompt(seed=6, size=96, batch=2, prefix="c/x"), "7")
    assert (await fetch(client, new_seed[0]))[2] != data


async def test_view_range_etag_and_preview(client: SimClient) -> None:
    entry = (await saved(client, txt2img_prompt(), "7"))[0]
    status, headers, whole = await fetch(client, entry)
    assert {"Etag", "Last-Modified", "Accept-Ranges", "Content-Disposition"} <= set(headers)
    assert "Cache-Control" not in headers
    status, headers, part = await fetch(client, entry, Range="bytes=0-15")
    assert status == 206
    assert part == whole[:16]
    assert headers["Content-Range"] == f"bytes 0-15/{len(whole)}"
    params = {**{k: entry[k] for k in ("filename", "subfolder", "type")}, "preview": "webp;50"}
    async with client.http.get(f"{client.url}/api/view", params=params) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/webp"
        assert (await resp.read())[8:12] == b"WEBP"


def probe(data: bytes) -> tuple[str, int, Fraction, tuple[int, int]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
        return stream.codec_context.name, frames, rate, (stream.width, stream.height)


async def test_vhs_h264_mp4_has_requested_frames_and_rate(client: SimClient) -> None:
    gifs = await saved(client, video_prompt(frames=8, fps=8, prefix="AnimateDiff"), "8", "gifs")
    entry = gifs[0]
    assert entry["filename"] == "AnimateDiff_00001.mp4"
    assert entry["workflow"] == "AnimateDiff_00001.png"
    assert entry["format"] == "video/h264-mp4"
    assert entry["frame_rate"] == 8.0
    assert entry["fullpath"].endswith("/AnimateDiff_00001.mp4")
    progress = [
        m["data"]["value"]
        for m in client.messages
        if m["type"] == "progress" and m["data"]["node"] == "8"
    ]
    assert progress == list(range(1, 9))  # one per frame
    status, headers, data = await fetch(client, entry)
    assert status == 200
    assert headers["Content-Type"] == "video/mp4"
    assert probe(data) == ("h264", 8, Fraction(8), (64, 64))
    again = await saved(
        client,
        video_prompt(
            frames=8,
            fps=8,
            prefix="AnimateDiff",
        ),
        "8",
        "gifs",
    )
    assert again[0]["filename"] == "AnimateDiff_00001.mp4"  # cached: old name, no new file


@pytest.mark.parametrize(
    ("fmt", "ext", "codec"), [("image/gif", "gif", "gif"), ("video/webm", "webm", "vp9")]
)
async def test_vhs_other_formats(client: SimClient, fmt: str, ext: str, codec: str) -> None:
    entry = (
        await saved(client, video_prompt(frames=4, fps=4, fmt=fmt, prefix="v/clip"), "8", "gifs")
    )[0]
    assert entry["filename"] == f"clip_00001.{ext}"
    name, frames, _, size = probe((await fetch(client, entry))[2])
    assert (name, frames, size) == (codec, 4, (64, 64))


async def test_animated_webp_and_png_share_the_counter(client: SimClient) -> None:
    prompt = txt2img_prompt(batch=3, size=32)
    del prompt["7"]
    prompt["8"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {"images": ["6", 0], "filename_prefix": "g/anim", "fps": 6.0, "lossless": False,
                   "quality": 80, "method": "default"},
    }  # fmt: skip
    prompt["9"] = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {
            "images": ["6", 0],
            "filename_prefix": "g/anim",
            "fps": 6.0,
            "compress_level": 4,
        },
    }
    prompt_id = await client.run(prompt)
    outputs = (await client.history(prompt_id))["outputs"]
    names = sorted(o["images"][0]["filename"] for o in outputs.values())
    assert names == ["anim_00001_.webp", "anim_00002_.png"] or names == [
        "anim_00001_.png",
        "anim_00002_.webp",
    ]
    for output in outputs.values():
        assert output["animated"] == [True]
        _, _, data = await fetch(client, output["images"][0])
        with Image.open(io.BytesIO(data)) as img:
            assert getattr(img, "n_frames", 1) == 3
            assert img.size == (32, 32)


async def test_save_image_websocket_sends_pngs(simulator: Simulator, client: SimClient) -> None:
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": 255},
        },
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    prompt_id = await client.run(prompt)
    frames = [b for b in client.binary if b[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"]
    assert len(frames) == 2
    with Image.open(io.BytesIO(frames[0][8:])) as img:
        assert img.size == (16, 8)
    assert (await client.history(prompt_id))["outputs"] == {}


async def test_animatediff_gen1_chain_makes_a_video(client: SimClient) -> None:
    prompt = video_prompt(frames=4, fps=4, prefix="gen1/clip")
    prompt["9"] = {
        "class_type": "ADE_AnimateDiffLoaderGen1",
        "inputs": {
            "model": ["1", 0],
            "model_name": "mm_sd_v15_v2.ckpt",
            "beta_schedule": "autoselect",
        },
    }
    prompt["5"]["inputs"]["model"] = ["9", 0]
    entry = (await saved(client, prompt, "8", "gifs"))[0]
    assert entry["subfolder"] == "gen1"
    assert probe((await fetch(client, entry))[2])[:2] == ("h264", 4)

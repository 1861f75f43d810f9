"""HTTP details not covered by the transcript replays."""

from __future__ import annotations

import io

import aiohttp
from comfyui_grpc.simulator import Simulator
from PIL import Image
from simclient import SimClient


def png(color: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


async def upload(
    http: aiohttp.ClientSession, url: str, data: bytes, **fields: str
) -> tuple[int, object]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="pic.png", content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(f"{url}/upload/image", data=form) as resp:
        return resp.status, await resp.json() if resp.content_type == "application/json" else None


async def test_upload_then_load_image_uses_its_size(
    simulator: Simulator, client: SimClient
) -> None:
    status, body = await upload(
        client.http, simulator.url, png((1, 2, 3), (40, 30)), subfolder="in"
    )
    assert (status, body) == (200, {"name": "pic.png", "subfolder": "in", "type": "input"})
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in/pic.png"}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }
    prompt_id = await client.run(prompt)
    assert (await client.history(prompt_id))["outputs"]["3"] == {"text": ["30"]}
    assert any(frame.endswith(b"width: 40, height: 30\n batch size: 1") for frame in client.binary)
    # Re-uploading other bytes under the same name changes LoadImage's cache key.
    await upload(
        client.http, simulator.url, png((9, 9, 9), (50, 30)), subfolder="in", overwrite="1"
    )
    again = await client.run(prompt)
    assert (await client.history(again))["outputs"]["3"] == {"text": ["30"]}
    cached = await client.wait_for(
        lambda m: m["type"] == "execution_cached" and m["data"]["prompt_id"] == again
    )
    assert "1" not in cached["data"]["nodes"]


async def test_unknown_upload_type_is_500(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, _ = await upload(http, simulator.url, png((0, 0, 0)), type="bogus")
    assert status == 500


async def test_annotated_filename_picks_folder(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    await upload(http, simulator.url, png((5, 5, 5)))
    async with http.get(f"{simulator.url}/view", params={"filename": "pic.png [input]"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
    async with http.get(f"{simulator.url}/view", params={"filename": "pic.png"}) as resp:
        assert resp.status == 404  # default type is output


async def test_cross_origin_request_to_loopback_is_refused(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        f"{simulator.url}/queue", headers={"Origin": "http://evil.example"}
    ) as resp:
        assert resp.status == 403
    host = simulator.url.removeprefix("http://")
    async with http.get(f"{simulator.url}/queue", headers={"Origin": f"http://{host}"}) as resp:
        assert resp.status == 200


async def test_models_and_object_info(simulator: Simulator, client: SimClient) -> None:
    assert await client.get_json("/models/animatediff_models") == ["mm_sd_v15_v2.ckpt"]
    assert await client.get_json("/models/loras") == sorted(simulator.loras)
    assert await client.get_json("/models/vae") == []
    info = await client.get_json("/object_info")
    # The nodes the example templates use, as real ComfyUI describes them.
    lora = info["LoraLoader"]["input"]["required"]
    assert lora["lora_name"][0] == sorted(simulator.loras)
    assert lora["strength_model"] == [
        "FLOAT",
        {
            "default": 1.0,
            "min": -100.0,
            "max": 100.0,
            "step": 0.01,
            "tooltip": "How strongly to modify the diffusion model. This value can be negative.",
        },
    ]
    assert info["LoraLoader"]["output"] == ["MODEL", "CLIP"]
    scale = info["ImageScale"]["input"]["required"]
    assert scale["upscale_method"][0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert scale["width"] == ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}]
    assert info["VAEEncode"]["output"] == ["LATENT"]
    for name in (
        "KSampler",
        "VHS_VideoCombine",
        "TestSlowProgress",
        "TestFail",
        "ADE_UseEvolvedSampling",
    ):
        assert info[name]["name"] == name
    assert info["VHS_VideoCombine"]["output_node"] is True

"""Templates and models through the SDK (async and blocking), against a real
gateway serving examples/templates in front of the simulator."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from client_testkit import png_bytes, templated_gateway
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import (
    AsyncClient,
    Client,
    EventKind,
    InvalidArgumentError,
    JobState,
    NotFoundError,
    ParameterType,
    ProgressUpdate,
    UploadedInput,
    template_request,
)

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture
async def templated(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with templated_gateway(simulator.url, tmp_path) as gateway:
        yield gateway


def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


async def test_async_lists_templates_and_models_as_typed_values(
    templated: Gateway, simulator: Simulator
) -> None:
    async with AsyncClient(target(templated)) as client:
        templates = await client.list_templates()
        assert [t.name for t in templates] == [
            "image-to-image",
            "sdxl-lora",
            "text-to-image",
            "video",
        ]
        assert [t.built_in for t in templates] == [False, False, True, True]

        lora = await client.get_template("sdxl-lora")
        assert (lora.name, lora.version, lora.runnable) == ("sdxl-lora", 1, True)
        assert lora.outputs == ("9",)
        steps = lora.parameter("steps")
        assert steps.type is ParameterType.INT
        assert (steps.min, steps.max, steps.default, steps.has_default) == (1, 80, 25, True)
        assert lora.parameter("prompt").required is True
        assert lora.parameter("seed").type is ParameterType.SEED
        assert lora.parameter("seed").has_default is False
        assert lora.parameter("sampler").values == ("euler", "euler_ancestral", "dpmpp_2m")
        model = lora.parameter("lora")
        assert (model.type, model.folder) == (ParameterType.MODEL, "loras")
        assert model.values == ("detail.safetensors", "watercolor.safetensors")
        with pytest.raises(KeyError, match="has no parameter 'colour'"):
            lora.parameter("colour")
        image = (await client.get_template("image-to-image", 1)).parameter("image")
        assert image.type is ParameterType.IMAGE

        with pytest.raises(NotFoundError) as missing:
            await client.get_template("nope")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(NotFoundError):
            await client.get_template("sdxl-lora", 7)

        folders = {f.name: f for f in await client.list_models()}
        assert set(folders["checkpoints"].names) == set(simulator.checkpoints)
        assert all(f.backends == (simulator.url,) for f in folders["checkpoints"].files)
        (loras,) = await client.list_models("loras")
        assert loras.name == "loras"
        assert loras.names == ("detail.safetensors", "watercolor.safetensors")


async def test_async_runs_a_template_and_chains_an_image_through_path_and_artifact(
    templated: Gateway, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    updates: list[ProgressUpdate] = []
    async with AsyncClient(target(templated)) as client:
        fox = await client.generate_from_template(
            "sdxl-lora", prompt="a red fox", on_progress=updates.append, **SMALL
        )
        assert fox.state is JobState.SUCCEEDED
        assert updates[-1].kind is EventKind.SUCCEEDED
        assert [a.node_id for a in fox.artifacts] == ["9"]  # not the PreviewImage (11)
        assert (fox.job.template, fox.job.template_version) == ("sdxl-lora", 1)
        used = fox.job.template_params
        assert used["prompt"] == "a red fox"
        assert used["steps"] == 2
        assert used["lora"] == "detail.safetensors"
        assert isinstance(used["seed"], int)  # the random seed it drew, as a whole number

        # A Path is read and sent inline; the gateway uploads it for the job.
        first = await client.generate_from_template(
            "image-to-image", 1, prompt="a watercolor", image=photo, **SMALL
        )
        assert first.job.template_params["image"].startswith("comfyui-grpc-")
        # An Artifact of that job is the next job's input (chaining).
        (artifact,) = first.artifacts
        second = await client.generate_from_template(
            "image-to-image", params={"prompt": "an oil painting", "image": artifact, **SMALL}
        )
        assert second.state is JobState.SUCCEEDED
        assert second.artifacts[0].sha256 != artifact.sha256
        # An uploaded image's name, given as the UploadedInput or its str.
        uploaded = await client.upload_input(png_bytes(64, 64), filename="mine.png")
        for value in (uploaded, uploaded.image):
            done = await client.generate_from_template(
                "image-to-image", prompt="ink", image=value, **SMALL
            )
            assert done.job.template_params["image"] == uploaded.image

        with pytest.raises(InvalidArgumentError) as bad:
            await client.generate_from_template("sdxl-lora", prompt="x", steps=500)
        assert [v.field for v in bad.value.violations] == ["template.params.steps"]
        with pytest.raises(InvalidArgumentError) as missing:
            await client.generate_from_template("image-to-image", prompt="x", **SMALL)
        assert [v.field for v in missing.value.violations] == ["template.params.image"]
        with pytest.raises(NotFoundError):
            await client.generate_from_template("nope", prompt="x")


def test_image_values_become_what_the_api_takes(tmp_path: Path) -> None:
    """Local conversions, before any call: no gateway needed."""
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG-ish")
    request = template_request(
        "image-to-image",
        2,
        {
            "path": photo,
            "raw": b"abc",
            "name": "pasted.png",
            "upload": UploadedInput("in/x.png", "x.png", "in", (), 3),
            "seed": 2**53,
        },
    )
    params = request.template.params
    assert (request.template.name, request.template.version) == ("image-to-image", 2)
    assert base64.b64decode(params["path"]["bytes"]) == b"\x89PNG-ish"
    assert base64.b64decode(params["raw"]["bytes"]) == b"abc"
    assert params["name"] == "pasted.png"
    assert params["upload"] == "in/x.png"
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        template_request("t", 0, {"seed": 2**53 + 1})
    with pytest.raises(ValueError, match="upload_input"):
        template_request("t", 0, {"image": bytes(8 * 1024 * 1024 + 1)})
    with pytest.raises(TypeError, match="a object is not a value a template takes"):
        template_request("t", 0, {"image": object()})
    with pytest.raises(ValueError, match="cannot read"):
        template_request("t", 0, {"image": tmp_path / "missing.png"})


async def test_sync_client_lists_runs_and_chains_templates(
    templated: Gateway, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())

    def scenario() -> None:
        with Client(target(templated)) as client:
            names = [t.name for t in client.list_templates()]
            assert names == ["image-to-image", "sdxl-lora", "text-to-image", "video"]
            template = client.get_template("image-to-image")
            assert template.parameter("denoise").type is ParameterType.FLOAT
            assert template.parameter("denoise").default == 0.6
            with pytest.raises(NotFoundError):
                client.get_template("nope")
            (loras,) = client.list_models(folder="loras")
            assert "watercolor.safetensors" in loras.names

            updates: list[ProgressUpdate] = []
            first = client.generate_from_template(
                "image-to-image",
                prompt="a watercolor",
                image=photo,
                on_progress=updates.append,
                **SMALL,
            )
            assert first.state is JobState.SUCCEEDED
            assert updates[-1].kind is EventKind.SUCCEEDED
            assert first.job.template == "image-to-image"
            second = client.generate_from_template(
                "image-to-image", prompt="again", image=first.artifacts[0], **SMALL
            )
            assert second.state is JobState.SUCCEEDED
            (path,) = second.download_all(tmp_path / "out")
            assert path.read_bytes()[1:4] == b"PNG"
            with pytest.raises(InvalidArgumentError) as bad:
                client.generate_from_template("sdxl-lora", prompt="x", sampler="nope")
            assert [v.field for v in bad.value.violations] == ["template.params.sampler"]
            with pytest.raises(TypeError, match="given twice: prompt"):
                client.generate_from_template("sdxl-lora", params={"prompt": "a"}, prompt="b")

    await asyncio.to_thread(scenario)

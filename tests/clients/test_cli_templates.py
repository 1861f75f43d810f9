"""``comfyui-grpc templates``, ``templates show``, ``generate --template`` and
``models`` as real subprocesses against a gateway serving examples/templates."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from client_testkit import png_bytes, read_bytes, templated_gateway
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator


@pytest.fixture
async def templated(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with templated_gateway(simulator.url, tmp_path / "gateway") as gateway:
        yield gateway


async def cli(
    gateway: Gateway | None, *args: str, cwd: Path | None = None, stdout: int | None = None
) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("COMFYUI_GRPC_TOKEN", None)
    # Without a gateway nothing listens: a usage error must come before any call.
    env["COMFYUI_GRPC_TARGET"] = f"127.0.0.1:{gateway.port if gateway else 9}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout is None else stdout,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), err.decode()


def table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """A printed table's header and rows, cut where the header's columns start."""
    header, *rows = lines
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    cells = [[row[a:b].strip() for a, b in bounds] for row in rows]
    return header.split(), cells


async def test_templates_table_and_json(templated: Gateway) -> None:
    code, out, err = await cli(templated, "templates")
    assert code == 0, err
    header, cells = table(out.splitlines())
    assert header == ["NAME", "VERSION", "RUNNABLE", "SOURCE", "DESCRIPTION"]
    rows = {row[0]: row for row in cells}
    assert list(rows) == ["image-to-image", "sdxl-lora", "text-to-image", "video"]
    assert rows["sdxl-lora"][1:4] == ["1", "yes", "file"]
    assert rows["text-to-image"][3] == "built-in"
    assert rows["sdxl-lora"][4].startswith("SDXL base with one LoRA")

    code, out, err = await cli(templated, "templates", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [t["name"] for t in listed] == list(rows)
    lora = next(t for t in listed if t["name"] == "sdxl-lora")
    assert lora["runnable"] is True
    assert {p["name"] for p in lora["parameters"]} >= {"prompt", "steps", "lora"}


async def test_templates_show_lists_the_parameters(templated: Gateway) -> None:
    code, out, err = await cli(templated, "templates", "show", "sdxl-lora")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "sdxl-lora version 1 (file, runnable)"
    assert "outputs: nodes 9" in lines
    header, cells = table(lines[lines.index("") + 1 :])
    assert header == ["PARAMETER", "TYPE", "DEFAULT", "DESCRIPTION", "ALLOWED"]
    params = {row[0]: row for row in cells}
    assert params["prompt"] == ["prompt", "string", "(required)", "What to draw", ""]
    assert params["steps"] == ["steps", "int", "25", "", "1..80"]
    assert params["seed"][:3] == ["seed", "seed", "(random)"]
    assert params["sampler"][4] == "euler, euler_ancestral, dpmpp_2m"
    assert params["lora"] == [
        "lora",
        "model (loras)",
        "detail.safetensors",
        "",
        "detail.safetensors, watercolor.safetensors",
    ]

    for args in (["--json", "show", "image-to-image"], ["show", "image-to-image", "--json"]):
        code, out, err = await cli(templated, "templates", *args, "--version", "1")
        assert code == 0, err
        shown = json.loads(out)
        assert (shown["name"], shown["version"]) == ("image-to-image", 1)
        image = next(p for p in shown["parameters"] if p["name"] == "image")
        assert image["type"] == "PARAMETER_TYPE_IMAGE"

    code, out, err = await cli(templated, "templates", "show", "nope")
    assert code == 1
    assert err.startswith("comfyui-grpc: error: NOT_FOUND")
    code, _, err = await cli(templated, "templates", "show", "sdxl-lora", "--version", "9")
    assert code == 1, err


async def test_generate_from_a_template_with_params_and_a_file(
    templated: Gateway, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    out_dir = tmp_path / "out"
    code, out, err = await cli(
        templated,
        "generate",
        "--template",
        "image-to-image",
        "-p",
        "prompt=a watercolor of a fox",
        "-p",
        "steps=3",
        "-p",
        "width=64",
        "--param",
        "height=64",
        "-p",
        "denoise=0.5",
        "-p",
        "image=@photo.png",
        "--out",
        str(out_dir),
        "--json",
        "--quiet",
        cwd=tmp_path,
    )
    assert code == 0, err
    result = json.loads(out)
    job = result["job"]
    assert job["template"] == "image-to-image"
    used = job["template_params"]
    assert used["prompt"] == "a watercolor of a fox"  # text that is not JSON stays text
    assert used["steps"] == 3  # JSON numbers stay numbers
    assert used["denoise"] == 0.5
    assert used["image"].startswith("comfyui-grpc-")  # the file went inline, uploaded for us
    (saved,) = result["files"]
    assert read_bytes(Path(saved["path"]))[1:4] == b"PNG"
    assert Path(saved["path"]).parent == out_dir

    # The PROMPT argument is the template's prompt; the rest take their defaults.
    code, out, err = await cli(
        templated,
        "generate",
        "a red fox",
        "--template",
        "sdxl-lora",
        "--template-version",
        "1",
        "-p",
        "steps=2",
        "-p",
        "width=64",
        "-p",
        "height=64",
        "-p",
        'negative="@nobody"',
        "--no-download",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    used = json.loads(out)["job"]["template_params"]
    assert (used["prompt"], used["negative"], used["cfg"]) == ("a red fox", "@nobody", 7)

    # The gateway's refusal names the parameter.
    code, _, err = await cli(templated, "generate", "--template", "sdxl-lora", "-p", "steps=500")
    assert code == 1
    assert "template.params.prompt" in err or "template.params.steps" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--template", "sdxl-lora", "-p", "steps"], "is not NAME=VALUE"),
        (["--template", "sdxl-lora", "-p", "image=@missing.png"], "is not a readable file"),
        (["--template", "sdxl-lora", "--steps", "3"], "--steps cannot be used with --template"),
        (["--template", "sdxl-lora", "-p", "a=1", "-p", "a=2"], "-p a is given twice"),
        (["x", "--template", "sdxl-lora", "-p", "prompt=y"], "the prompt is given twice"),
        (["-p", "steps=3"], "-p and --template-version need --template NAME"),
        ([], "give a PROMPT (or --template NAME"),
    ],
)
async def test_template_usage_errors_exit_2_before_any_call(args: list[str], expected: str) -> None:
    code, _, err = await cli(None, "generate", *args)
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err


async def test_models_table_json_and_folder(templated: Gateway, simulator: Simulator) -> None:
    code, out, err = await cli(templated, "models")
    assert code == 0, err
    header, rows = table(out.splitlines())
    assert header == ["FOLDER", "FILE", "BACKENDS"]
    checkpoints = {r[1] for r in rows if r[0] == "checkpoints"}
    assert checkpoints == set(simulator.checkpoints)
    assert all(r[2] == simulator.url for r in rows)

    code, out, err = await cli(templated, "models", "--folder", "loras", "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {
            "name": "loras",
            "files": [
                {"name": "detail.safetensors", "backends": [simulator.url]},
                {"name": "watercolor.safetensors", "backends": [simulator.url]},
            ],
        }
    ]


async def test_new_listings_ignore_a_closed_pipe(templated: Gateway) -> None:
    for args in (["templates"], ["templates", "show", "sdxl-lora"], ["models", "--json"]):
        reader, writer = os.pipe()
        os.close(reader)  # the reader has gone, like `| head`
        try:
            code, _, err = await cli(templated, *args, stdout=writer)
        finally:
            os.close(writer)
        assert (code, err) == (0, ""), args

"""clients/go: built from Debian's Go packages, run against the gateway."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from client_testkit import read_bytes, require_tool
from comfyui_grpc.app import Gateway

GO_DIR = Path(__file__).resolve().parents[2] / "clients" / "go"


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_go_example_generates_an_image(gateway: Gateway, tmp_path: Path) -> None:
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        require_tool(tool)
    binary = tmp_path / "generate"
    code, _, err = await run("bash", str(GO_DIR / "build.sh"), str(binary))
    assert code == 0, err

    env = dict(os.environ, COMFYUI_GRPC_TARGET=f"127.0.0.1:{gateway.port}")
    env.pop("COMFYUI_GRPC_TOKEN", None)
    out_dir = tmp_path / "out"
    code, out, err = await run(
        str(binary), "-size", "64", "-steps", "3", "-out", str(out_dir), "a lighthouse", env=env
    )
    assert code == 0, err
    assert "KSampler 3/3" in err
    assert "100% succeeded" in err
    path, key = out.split()[0], out.split("key=")[1].split()[0]
    data = read_bytes(Path(path))
    assert data.startswith(b"\x89PNG")
    assert data == read_bytes(gateway.settings.storage.local_dir / key)
    assert Path(path).name.startswith(key.split("/")[0][:8] + "-")

    # A second run into the same folder keeps the first run's file.
    code, out, err = await run(
        str(binary), "-size", "64", "-steps", "1", "-out", str(out_dir), "a lighthouse", env=env
    )
    assert code == 0, err
    second = Path(out.split()[0])
    assert second != Path(path)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([Path(path).name, second.name])

    code, out, err = await run(str(binary), "-size", "7", "x", env=env)
    assert code == 1
    assert "InvalidArgument" in err
    assert "[text_to_image.width:" in err

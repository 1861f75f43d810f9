"""The README's quick start works as printed, in a fresh shell.

`comfyui-grpc dev` runs as `make run` starts it; then every shell and Python
block of the quick start runs, line for line, in a shell whose PATH does not
have the virtualenv (as a new terminal would not), from a directory that
holds `.venv` as a fresh clone after `make run` would. Only two things are
adapted: the port (`localhost:50051` -> the test's port, and the CLI's
default target with it, since another gateway may own 50051) and blocks that need what a test machine lacks (the
`make` lines, which `make test` itself is running, and a real ComfyUI).
The dev banner's commands must run exactly as printed too.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SKIPPED_BLOCKS = ("make run", "--comfyui-url http://comfyui:")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def quick_start_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block from "Quick start" to "The API"."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start") : readme.index("## The API")]
    return re.findall(r"```(sh|python)\n(.*?)```", section, re.DOTALL)


def fresh_shell_env() -> dict[str, str]:
    """The test's environment without the virtualenv on PATH."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "COMFYUI_GRPC_TARGET", "COMFYUI_GRPC_TOKEN"):
        env.pop(name, None)
    keep = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN]
    env["PATH"] = os.pathsep.join(keep)
    return env


@dataclass
class Dev:
    port: int
    banner: str
    clone: Path


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[Dev]:
    if not (VENV_BIN / "activate").exists():
        pytest.skip("the tests do not run from a virtualenv")
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(VENV_BIN.parent)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc",
        "dev",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--simulator-port",
        str(free_port()),
        "--step-seconds",
        "0.01",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=fresh_shell_env(),
        cwd=clone,
    )
    assert process.stdout is not None
    banner = bytearray()
    try:
        while b"Ctrl-C stops everything." not in banner:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, f"dev exited: {bytes(banner)!r}"
            banner.extend(line)
        yield Dev(port, banner.decode(), clone)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def run(script: str, language: str, dev: Dev) -> str:
    script = script.replace("localhost:50051", f"localhost:{dev.port}")
    if language == "python":
        # In the shell the quick start set up: the virtualenv activated.
        script = f"source .venv/bin/activate\npython3 - <<'PYTHON'\n{script}PYTHON\n"
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"set -euo pipefail\n{script}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # The CLI's default target is localhost:50051: the same port adaptation.
        env={**fresh_shell_env(), "COMFYUI_GRPC_TARGET": f"localhost:{dev.port}"},
        cwd=dev.clone,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"this README block failed:\n{script}\n---\n{text}"
    return text


async def test_the_quick_start_runs_as_printed(dev: Dev) -> None:
    blocks = [(lang, code) for lang, code in quick_start_blocks() if lang in ("sh", "python")]
    runnable = [(lang, code) for lang, code in blocks if not any(s in code for s in SKIPPED_BLOCKS)]
    assert any("source .venv/bin/activate" in code for _, code in runnable)
    assert len(runnable) >= 4
    # One shell, like a person pasting the blocks in order: JOB_ID carries over.
    shell = "".join(code for lang, code in runnable if lang == "sh")
    output = await run(shell, "sh", dev)
    assert output.count("saved ") == 0  # the CLI prints paths, not "saved"
    assert "comfyui_grpc.v1.GenerationService" in output
    assert '"state": "JOB_STATE_SUCCEEDED"' in output
    python = next(code for lang, code in runnable if lang == "python")
    output = await run(python, "python", dev)
    assert "saved out/" in output
    progress = [line for line in output.splitlines() if "%" in line]
    assert all(line.split("%", 1)[1].strip() for line in progress), progress
    saved = sorted(p.name for p in (dev.clone / "out").iterdir())
    assert len(saved) == len(set(saved)) >= 3


async def test_the_dev_banner_commands_run_as_printed(dev: Dev) -> None:
    assert "metrics    off" in dev.banner or "/metrics" in dev.banner
    tries = dev.banner.split("Try it:\n", 1)[1].split("\n\n", 1)[0]
    commands = re.split(r"(?<!\\)\n", tries)
    runnable = [c.strip() for c in commands if c.strip() and "JOB_ID" not in c]
    assert any(c.split()[0].endswith("grpcurl") for c in runnable)
    assert any(c.split()[0].endswith("comfyui-grpc") for c in runnable)
    for command in runnable:
        await run(command + "\n", "sh", dev)

"""The ``comfyui-grpc`` client commands, run as real subprocesses against
the gateway fixture (piped output, and a pseudo-terminal for the live bar
and the Ctrl-C prompt)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_testkit import TerminalOutput, read_bytes, slow_workflow
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import AsyncClient, EventKind, JobState, workflow_request


def cli_env(gateway: Gateway) -> dict[str, str]:
    env = dict(os.environ)
    env["COMFYUI_GRPC_TARGET"] = f"127.0.0.1:{gateway.port}"
    env.pop("COMFYUI_GRPC_TOKEN", None)
    return env


# The CLI as a person at a terminal runs it: with Ctrl-C delivered. A parent
# that ignores SIGINT (background jobs of a non-interactive shell, some CI
# runners) hands that on to its children, and Python then never raises
# KeyboardInterrupt, so the Ctrl-C tests restore the default first.
INTERACTIVE_CLI = (
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from comfyui_grpc_client.cli import main; sys.exit(main())",
)


@pytest.fixture(params=["default", "ignored"])
def parent_sigint(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with SIGINT as the test process got it, and ignored."""
    if request.param == "default":
        yield request.param
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield request.param
    finally:
        signal.signal(signal.SIGINT, previous)


async def cli(gateway: Gateway, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(gateway),
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_generate_saves_the_image_and_prints_plain_progress(
    gateway: Gateway, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = await cli(
        gateway,
        "generate",
        "a lighthouse at dusk",
        "--size",
        "64x64",
        "--steps",
        "5",
        "--seed",
        "11",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    (saved,) = out_dir.iterdir()
    data = saved.read_bytes()
    assert data.startswith(b"\x89PNG")
    line = out.strip()
    assert line.startswith(str(saved))
    key = line.split("key=")[1].split()[0]
    assert (gateway.settings.storage.local_dir / key).read_bytes() == data
    # Not a terminal: no carriage returns or escape codes, one line per change.
    assert "\r" not in err
    assert "\x1b" not in err
    lines = err.splitlines()
    assert lines[0].startswith("job ")
    assert any("node" in ln and "KSampler" in ln for ln in lines)
    assert any(ln.strip().startswith("100% succeeded") for ln in lines)
    assert lines[-1].startswith(f"job {key.split('/')[0]} succeeded")


async def test_generate_video_as_json_and_the_other_commands(
    gateway: Gateway, tmp_path: Path
) -> None:
    code, out, err = await cli(
        gateway,
        "generate",
        "a paper boat",
        "--video",
        "--frames",
        "8",
        "--fps",
        "8",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--json",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert err == ""
    result = json.loads(out)
    job_id = result["job"]["job_id"]
    assert result["job"]["state"] == "JOB_STATE_SUCCEEDED"
    (item,) = result["files"]
    assert item["content_type"] == "video/mp4"
    data = read_bytes(Path(item["path"]))
    assert hashlib.sha256(data).hexdigest() == item["sha256"]

    code, out, err = await cli(gateway, "jobs", "--json")
    assert code == 0, err
    assert [j["job_id"] for j in json.loads(out)] == [job_id]
    code, out, err = await cli(gateway, "jobs", "--state", "succeeded")
    assert code == 0, err
    assert job_id in out
    assert "succeeded" in out

    code, out, err = await cli(gateway, "result", job_id, "--json")
    assert code == 0, err
    assert json.loads(out)["artifacts"][0]["key"] == item["key"]

    code, out, err = await cli(gateway, "watch", job_id, "--after", "0", "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert "snapshot" in events[0]
    assert [e["sequence"] for e in events[1:]] == list(range(1, len(events)))
    assert "succeeded" in events[-1]

    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        handle = await client.start(workflow_request(slow_workflow(400, 0.05)))
        async for update in handle.updates():
            if update.kind is EventKind.NODE_PROGRESS:
                break
        code, out, err = await cli(gateway, "cancel", handle.job_id)
        assert code == 0, err
        assert out.startswith(f"job {handle.job_id}: ")
        final = await client.wait(handle.job_id, timeout=10)
        assert final.state is JobState.CANCELLED
        code, out, err = await cli(gateway, "result", handle.job_id)
        assert code == 3
        assert f"job {handle.job_id}: cancelled" in out


async def test_errors_are_one_line_with_code_and_fields(gateway: Gateway) -> None:
    code, out, err = await cli(gateway, "generate", "x", "--size", "7x64", "--out", "/nonexistent")
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("comfyui-grpc: error: INVALID_ARGUMENT")
    assert "text_to_image.width" in line

    code, out, err = await cli(gateway, "result", "00000000-0000-4000-8000-000000000000")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "NOT_FOUND" in line

    code, out, err = await cli(gateway, "generate", "x", "--size", "big")
    assert code == 2
    assert "WIDTHxHEIGHT" in err


async def _read_until(stream: asyncio.StreamReader, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        chunk = await asyncio.wait_for(stream.read(4096), 30)
        if not chunk:
            raise AssertionError(f"output ended before {needle!r}: {bytes(seen)!r}")
        seen.extend(chunk)


async def test_ctrl_c_on_a_terminal_asks_and_cancels(
    gateway: Gateway, simulator: Simulator, tmp_path: Path, parent_sigint: str
) -> None:
    """A pseudo-terminal: the live bar redraws in place, and Ctrl-C asks."""
    simulator.faults.step_seconds = 0.05  # 200 steps: ten seconds to interrupt in
    controller, terminal = os.openpty()
    process = await asyncio.create_subprocess_exec(
        *INTERACTIVE_CLI,
        "generate",
        "slow",
        "--size",
        "64x64",
        "--steps",
        "200",
        "--out",
        str(tmp_path),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli_env(gateway),
    )
    os.close(terminal)
    screen = TerminalOutput(controller)
    try:
        await screen.wait_for(b"KSampler")
        assert b"\r\x1b[2K[" in screen.data
        process.send_signal(signal.SIGINT)
        await screen.wait_for(b"Cancel job")
        job_id = bytes(screen.data).split(b"Cancel job ")[1].split(b"?")[0].decode()
        os.write(controller, b"y\n")
        assert await asyncio.wait_for(process.wait(), 30) == 130
        await screen.wait_for(f"job {job_id}: ".encode())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        screen.close()
    seen = screen.data
    assert b"Traceback" not in seen
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        job = await client.wait(job_id, timeout=10)
    assert job.state is JobState.CANCELLED
    assert await asyncio.to_thread(lambda: list(tmp_path.glob("*.png"))) == []


async def test_ctrl_c_without_a_terminal_keeps_the_job(
    gateway: Gateway, simulator: Simulator, parent_sigint: str
) -> None:
    simulator.faults.step_seconds = 0.05
    process = await asyncio.create_subprocess_exec(
        *INTERACTIVE_CLI,
        "generate",
        "slow",
        "--size",
        "64x64",
        "--steps",
        "200",
        "--no-download",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(gateway),
    )
    assert process.stderr is not None
    seen = bytearray()
    try:
        await _read_until(process.stderr, b"KSampler", seen)
        process.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    text = (bytes(seen) + rest).decode()
    job_id = text.split("job ")[1].split()[0]
    assert f"job {job_id} keeps running" in text
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        job = await client.get_result(job_id)
        assert job.state is JobState.RUNNING
        await client.cancel(job_id)

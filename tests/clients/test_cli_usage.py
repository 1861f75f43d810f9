"""The CLI as a first-time user meets it: bad numbers are usage errors (never
a traceback, never a silent default), a closed pipe is not an error, state
names are written one way, and every command's help lists the exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc_client import AsyncClient, image_request
from comfyui_grpc_client.cli import build_parser


def env_for(gateway: Gateway | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COMFYUI_GRPC_TOKEN", None)
    if gateway is not None:
        env["COMFYUI_GRPC_TARGET"] = f"127.0.0.1:{gateway.port}"
    else:  # nothing listens here: a usage error must come before any call
        env["COMFYUI_GRPC_TARGET"] = "127.0.0.1:9"
    return env


async def run_cli(
    *args: str, gateway: Gateway | None = None, stdout: int = asyncio.subprocess.PIPE
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env=env_for(gateway),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), err.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "0x512"],
        ["--size", "512x0"],
        ["--size=-5x512"],
        ["--size", "axb"],
        ["--steps", "0"],
        ["--steps=-3"],
        ["--batch", "0"],
        ["--frames", "0", "--video"],
        ["--fps", "0", "--video"],
        ["--seed=-1"],
    ],
)
async def test_bad_numbers_are_usage_errors(args: list[str]) -> None:
    code, _, err = await run_cli("generate", "a lighthouse", *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert "error: argument" in err
    assert err.splitlines()[0].startswith("usage: comfyui-grpc generate")


async def test_a_closed_pipe_is_not_an_error(gateway: Gateway) -> None:
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        submission = await client.submit(image_request("x", width=64, height=64, steps=1))
        await client.wait(submission.job_id, timeout=30)
    for args in (["jobs"], ["jobs", "--json"], ["result", submission.job_id]):
        reader, writer = os.pipe()
        os.close(reader)  # the reader has gone, like `| head` after its lines
        try:
            code, _, err = await run_cli(*args, gateway=gateway, stdout=writer)
        finally:
            os.close(writer)
        assert (code, err) == (0, ""), args


async def test_state_names_are_lowercase_everywhere(gateway: Gateway) -> None:
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        submission = await client.submit(image_request("x", width=64, height=64, steps=1))
        await client.wait(submission.job_id, timeout=30)
    job_id = submission.job_id
    for args in (["result", job_id], ["cancel", job_id], ["watch", job_id]):
        code, out, err = await run_cli(*args, gateway=gateway)
        assert code == 0, err
        assert f"job {job_id}: succeeded" in out, (args, out)
    code, out, _ = await run_cli("jobs", gateway=gateway)
    assert f"{job_id}  succeeded" in out


@pytest.mark.parametrize(
    "command",
    [
        "generate",
        "jobs",
        "watch",
        "cancel",
        "result",
        "upload",
        "templates",
        "templates show",
        "models",
    ],
)
async def test_every_command_documents_exit_codes_and_every_option(command: str) -> None:
    code, out, _ = await run_cli(*command.split(), "--help")
    assert code == 0
    assert "Exit codes: 0 ok, 1 call failed" in " ".join(out.split())
    parser = build_parser()
    for word in command.split():
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[word]
    undocumented = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert undocumented == []

"""Downloads stay in the folder they were given and never replace a file:
the SDK (ReadArtifact and presigned URLs) and the CLI, against the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import pytest
from client_testkit import read_bytes, slow_workflow
from comfyui_grpc.app import Gateway
from comfyui_grpc_client import Artifact, AsyncClient
from comfyui_grpc_client.files import job_file_name, numbered, safe_name

HOSTILE_NAMES = [
    "/tmp/absolute.png",
    "../../escape.png",
    "..\\..\\escape.png",
    "sub/dir/nested.png",
    "..",
    "",
    ".hidden.png",
    "a\x00b\nc.png",
]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_name_is_one_plain_component(name: str) -> None:
    safe = safe_name(name)
    assert safe
    assert "/" not in safe
    assert "\\" not in safe
    assert not safe.startswith(".")
    assert all(ch.isprintable() for ch in safe)


def test_names_carry_the_job_and_number_on_collision() -> None:
    assert job_file_name("0123abcd-ffff", "image_00001_.png") == "0123abcd-image_00001_.png"
    assert numbered("x.png", 1) == "x.png"
    assert numbered("x.png", 3) == "x-3.png"
    assert numbered("README", 2) == "README-2"


async def test_two_jobs_and_a_second_download_keep_every_file(
    gateway: Gateway, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        first = await client.generate_workflow(slow_workflow(1, 0.0, prefix="image"))
        second = await client.generate_workflow(slow_workflow(1, 0.0, prefix="image"))
        a = await first.download_all(out)
        b = await second.download_all(out)
        again = await first.download_all(out)
    paths = a + b + again
    assert len(set(paths)) == 3
    assert listing(out) == sorted(p.name for p in paths)
    assert a[0].name.startswith(first.job_id[:8] + "-")
    assert b[0].name.startswith(second.job_id[:8] + "-")
    assert again[0].name == numbered(a[0].name, 2)
    for path, result in ((a[0], first), (b[0], second), (again[0], first)):
        stored = gateway.settings.storage.local_dir / result.artifacts[0].key
        assert read_bytes(path) == read_bytes(stored)


async def test_hostile_file_names_stay_inside_the_folder(gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    outside = tmp_path / "escape.png"
    async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        result = await client.generate_workflow(slow_workflow(1, 0.0))
        (artifact,) = result.artifacts
        for name in HOSTILE_NAMES:
            path = await client.download(dataclasses.replace(artifact, filename=name), out)
            assert path.parent == out, name
    assert not outside.exists()
    assert tree(tmp_path / "box") == ["out", *(f"out/{n}" for n in listing(out))]
    assert len(listing(out)) == len(HOSTILE_NAMES)


async def test_presigned_download_keeps_to_the_folder(gateway: Gateway, tmp_path: Path) -> None:
    body = b"\x89PNG\r\n\x1a\n" + b"x" * 64

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = tmp_path / "dl" / "box"
    out.mkdir(parents=True)
    artifact = Artifact(
        job_id="feedbeef-0000",
        key="k",
        uri="s3://b/k",
        filename="../escape.png",
        content_type="image/png",
        size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        presigned_url=f"http://127.0.0.1:{port}/k",
    )
    async with server, AsyncClient(f"127.0.0.1:{gateway.port}") as client:
        first = await client.download_url(artifact, out)
        second = await client.download_url(artifact, out)
    assert (first.name, second.name) == ("feedbeef-escape.png", "feedbeef-escape-2.png")
    assert tree(tmp_path / "dl") == ["box", "box/feedbeef-escape-2.png", "box/feedbeef-escape.png"]


async def test_cli_generate_twice_into_one_folder_keeps_both(
    gateway: Gateway, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, COMFYUI_GRPC_TARGET=f"127.0.0.1:{gateway.port}")
    env.pop("COMFYUI_GRPC_TOKEN", None)
    saved: list[str] = []
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "comfyui_grpc_client",
            "generate",
            "a lighthouse",
            "--size",
            "64x64",
            "--steps",
            "1",
            "--seed",
            "5",
            "--quiet",
            "--out",
            str(out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        saved.append(stdout.decode().split()[0])
    assert len(set(saved)) == 2
    assert listing(out) == sorted(Path(p).name for p in saved)

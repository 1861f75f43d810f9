"""Live previews through the SDK (async and blocking) and the CLI's
``--preview-dir``, against a simulator started with a preview method."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import AsyncClient, Client, EventKind, Preview, ProgressUpdate
from PIL import Image

try:
    from testkit import gateway_settings
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.testkit import gateway_settings

STEP_SECONDS = 0.25
"""KSampler steps this far apart get one preview each at 10 previews a second."""


@pytest.fixture
async def preview_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    sim = Simulator(
        output_dir=tmp_path / "comfyui", step_seconds=STEP_SECONDS, preview_method="auto"
    )
    await sim.start(host="127.0.0.1", port=0)
    gateway = Gateway(gateway_settings(tmp_path, sim.url))
    await gateway.start()
    try:
        assert await gateway.wait_backends(10.0)
        yield gateway
    finally:
        await gateway.stop(grace=1.0)
        await sim.close()


def _size(image: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image)) as picture:
        picture.load()
        return picture.size


async def test_async_on_preview_gets_each_step_and_on_progress_no_previews(
    preview_gateway: Gateway,
) -> None:
    previews: list[Preview] = []
    updates: list[ProgressUpdate] = []

    async def on_preview(preview: Preview) -> None:
        previews.append(preview)

    async with AsyncClient(f"127.0.0.1:{preview_gateway.port}") as client:
        result = await client.generate_image(
            "a lighthouse",
            width=128,
            height=128,
            steps=3,
            on_progress=updates.append,
            on_preview=on_preview,
            preview_max_fps=10,
        )
    assert result.job.state.name == "SUCCEEDED"
    assert [p.value for p in previews] == [1, 2, 3]
    assert {(p.class_type, p.content_type, p.max, p.extension) for p in previews} == {
        ("KSampler", "image/jpeg", 3, ".jpg")
    }
    assert {_size(p.image) for p in previews} == {(16, 16)}
    assert EventKind.PREVIEW not in {u.kind for u in updates}
    assert [u.sequence for u in updates[1:]] == list(range(1, len(updates)))


async def test_sync_on_preview_runs_in_the_callers_thread(preview_gateway: Gateway) -> None:
    def scenario() -> tuple[list[Preview], set[threading.Thread]]:
        previews: list[Preview] = []
        threads: set[threading.Thread] = set()

        def on_preview(preview: Preview) -> None:
            threads.add(threading.current_thread())
            previews.append(preview)

        with Client(f"127.0.0.1:{preview_gateway.port}") as client:
            client.generate_image(
                "a boat", width=64, height=64, steps=2, on_preview=on_preview, preview_max_fps=10
            )
        assert threads == {threading.current_thread()}
        return previews, threads

    previews, _ = await asyncio.to_thread(scenario)
    assert [p.value for p in previews] == [1, 2]


async def test_a_stream_without_previews_gets_none(preview_gateway: Gateway) -> None:
    updates: list[ProgressUpdate] = []
    async with AsyncClient(f"127.0.0.1:{preview_gateway.port}") as client:
        await client.generate_image(
            "a cat", width=64, height=64, steps=2, on_progress=updates.append
        )
    assert all(u.preview is None and u.kind is not EventKind.PREVIEW for u in updates)


async def test_cli_preview_dir_keeps_the_newest_preview_per_node(
    preview_gateway: Gateway, tmp_path: Path
) -> None:
    previews = tmp_path / "previews"
    env = dict(os.environ, COMFYUI_GRPC_TARGET=f"127.0.0.1:{preview_gateway.port}")
    env.pop("COMFYUI_GRPC_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc_client",
        "generate",
        "a lighthouse",
        "--size",
        "128x128",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--preview-dir",
        str(previews),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    (saved,) = previews.iterdir()  # one file per node, replaced step by step
    assert saved.name.endswith("-preview-5.jpg")  # the template's KSampler is node 5
    assert _size(saved.read_bytes()) == (16, 16)
    assert f"-> {saved}" in err.decode()

"""A 300 MiB output copied from an HTTP source into S3 in bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from storage_helpers import MiB, open_uploads

SIZE = 300 * MiB
BLOCK = MiB
MAX_GROWTH = 48 * MiB
"""Two 8 MiB parts plus client buffers; a copy that held the object would need 300 MiB."""


def blocks(size: int) -> Iterator[bytes]:
    """Reproducible, incompressible, never-repeating data, generated on the fly."""
    base = hashlib.sha256(b"seed").digest() * (BLOCK // 32)
    for index, start in enumerate(range(0, size, BLOCK)):
        block = hashlib.sha256(index.to_bytes(8, "little")).digest() + base[32:]
        yield block[: min(BLOCK, size - start)]


async def serve_output(request: web.Request) -> web.StreamResponse:
    """Stands in for ComfyUI's /view: streams a generated video without holding it."""
    size = int(request.query.get("size", SIZE))
    response = web.StreamResponse(
        headers={"Content-Type": "video/mp4", "Content-Length": str(size)}
    )
    await response.prepare(request)
    for block in blocks(size):
        await response.write(block)
    await response.write_eof()
    return response


@pytest.mark.timeout(900)
async def test_300_mib_copy_stays_in_bounded_memory(moto_endpoint: str, raw_s3: Any) -> None:
    app = web.Application()
    app.router.add_get("/view", serve_output)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    bucket = f"big-{uuid.uuid4().hex[:12]}"
    key = "outputs/big-job/12/AnimateDiff_00001.mp4"
    here = Path(__file__).parent
    try:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(here / "large_copy_worker.py"),
            moto_endpoint,
            bucket,
            f"http://{host}:{port}/view",
            key,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(here)},
        )
        stdout, stderr = await worker.communicate()
    finally:
        await runner.cleanup()
    assert worker.returncode == 0, stderr.decode()
    report = json.loads(stdout)

    expected = hashlib.sha256()
    for block in blocks(SIZE):
        expected.update(block)
    assert report["size_bytes"] == SIZE
    assert report["sha256"] == expected.hexdigest()
    head = await raw_s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == SIZE
    stored = hashlib.sha256()
    body = (await raw_s3.get_object(Bucket=bucket, Key=key))["Body"]
    async with body:
        while chunk := await body.read(8 * MiB):
            stored.update(chunk)
    assert stored.hexdigest() == expected.hexdigest()
    assert await open_uploads(raw_s3, bucket) == []

    growth = (report["peak_kib"] - report["rss_before_kib"]) * 1024
    print(f"peak RSS growth for a {SIZE // MiB} MiB copy: {growth / MiB:.1f} MiB")
    assert growth < MAX_GROWTH

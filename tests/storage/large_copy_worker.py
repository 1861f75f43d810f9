"""Copies one HTTP download into S3 through ``put_stream`` and reports its memory use.

Run as a subprocess by ``test_large_copy.py`` so that the resident set measured
is the copy's alone: ``VmHWM`` (peak RSS) is reset just before the copy.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
from comfyui_grpc.storage import S3ArtifactStore, S3Settings
from storage_helpers import ACCESS_KEY, SECRET_KEY


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak() -> bool:
    """Sets VmHWM back to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def copy(endpoint: str, bucket: str, url: str, key: str) -> dict[str, object]:
    settings = S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        create_bucket=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    async with S3ArtifactStore(settings) as store, httpx.AsyncClient(timeout=60) as http:
        # Warm up imports, the connection pool and the hashing paths first.
        async with http.stream("GET", url, params={"size": 1024}) as response:
            await store.put_stream(
                f"{key}.warmup", response.aiter_bytes(), content_type="video/mp4"
            )
        peak_was_reset = reset_peak()
        rss_before = status_kib("VmRSS")
        async with http.stream("GET", url) as response:
            response.raise_for_status()
            stored = await store.put_stream(
                key, response.aiter_bytes(), content_type=response.headers["content-type"]
            )
        peak = status_kib("VmHWM")
    return {
        "size_bytes": stored.size_bytes,
        "sha256": stored.sha256,
        "rss_before_kib": rss_before,
        "peak_kib": peak,
        "peak_was_reset": peak_was_reset,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(copy(*sys.argv[1:5]))))

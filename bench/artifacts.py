"""Artifact copy: MB/s and peak RSS growth of copying one output into S3.

A 10 MiB image and a 1 GiB video (random bytes with .png/.mp4 names: the
copy path does not look inside) are written into the simulator's output
folder; each copy runs in a fresh ``bench.copy_worker`` process so that its
peak RSS is its own. MB/s is 10^6 bytes per second of wall time for the whole
copy, from the first request to the object (and, for the gateway, its
manifest) being stored and verified.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from . import servers
from .common import (
    ACCESS_KEY,
    REPO,
    SECRET_KEY,
    ChildFailed,
    Children,
    MiB,
    child_env,
    log,
    median,
)
from .copy_worker import WARMUP_FILE

MODES: dict[str, str] = {
    "gateway": "gateway path: ArtifactCollector, /view streamed into S3ArtifactStore.put_stream",
    "base64": "original design: whole /view body, base64 round trip, one put_object",
    "plain": "plain upload of the same bytes from a local file (put_object / multipart)",
}
BLOCK = 8 * MiB


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as out:
        left = size
        while left > 0:
            block = rng.randbytes(min(BLOCK, left))
            out.write(block)
            left -= len(block)


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


async def run_worker(
    mode: str, endpoint: str, bucket: str, sim: servers.Sim, filename: str
) -> dict[str, Any]:
    env = child_env(
        {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}, drop_aws=True
    )
    if mode == "gateway":
        env = servers.gateway_env(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.copy_worker",
        mode,
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--view-url",
        sim.url,
        "--filename",
        filename,
        "--local-dir",
        str(sim.output_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 900)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ChildFailed(f"copy worker {mode} did not finish in 900 s") from None
    if proc.returncode != 0:
        raise ChildFailed(f"copy worker {mode} failed: {stderr.decode()[-800:]}")
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return report


async def empty_bucket(endpoint: str, bucket: str) -> None:
    """Delete what the copies stored, so the S3 server does not keep gigabytes around."""
    from .copy_worker import s3_client

    async with s3_client(endpoint) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


async def run(
    workdir: Path,
    s3_endpoint: str,
    *,
    quick: bool,
    runs_small: int,
    modes: list[str],
) -> dict[str, Any]:
    files = {
        "image_10MiB": ("image.png", 10 * MiB, runs_small),
        "video_1GiB": ("video.mp4", 1024 * MiB, 1),
    }
    if quick:
        files["video_1GiB"] = ("video.mp4", 128 * MiB, 1)
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    async with Children() as children:
        sim = await servers.start_simulator(children, workdir, tag="sim-artifacts")
        (sim.output_dir / WARMUP_FILE).write_bytes(random.Random(0).randbytes(1024))
        for label, (filename, size, runs) in files.items():
            log(f"artifacts: writing {size // MiB} MiB {filename}")
            await asyncio.to_thread(write_random, sim.output_dir / filename, size, len(label))
            # Not recorded: the first copy of this size into a fresh S3 server
            # grows its heap and costs it about a third more CPU than the next.
            warm_bucket = f"warm-{uuid.uuid4().hex[:12]}"
            try:
                await run_worker("plain", s3_endpoint, warm_bucket, sim, filename)
            finally:
                await empty_bucket(s3_endpoint, warm_bucket)
            for run_index in range(runs):
                # Each run starts with another mode, so no mode always goes first.
                shift = run_index % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    key = f"{label}/{mode}"
                    needed_kib = size * 8 // 1024
                    if mode == "base64" and mem_available_kib() < needed_kib + 4 * 1024 * 1024:
                        skipped[key] = (
                            f"not measured: needs about {needed_kib // (1024 * 1024)} GiB free "
                            "memory (the whole-body base64 path holds several copies)"
                        )
                        continue
                    bucket = f"copy-{uuid.uuid4().hex[:12]}"
                    try:
                        report = await run_worker(mode, s3_endpoint, bucket, sim, filename)
                    except ChildFailed as exc:
                        log(f"artifacts: {key}: {exc}")
                        skipped[key] = f"failed: {str(exc)[:300]}"
                        continue
                    finally:
                        await empty_bucket(s3_endpoint, bucket)
                    if report.get("bytes") != size:
                        skipped[key] = f"copied {report.get('bytes')} bytes, not {size}"
                        continue
                    growth_mib = (report["peak_kib"] - report["rss_before_kib"]) / 1024
                    row = {
                        "file": label,
                        "size_bytes": size,
                        "mode": mode,
                        "run": run_index,
                        "seconds": report["seconds"],
                        "mb_per_s": size / report["seconds"] / 1e6,
                        "peak_rss_growth_mib": growth_mib,
                        "rss_before_mib": report["rss_before_kib"] / 1024,
                        "peak_reset": report.get("peak_reset", False),
                        "phases_s": report.get("phases_s", {}),
                    }
                    results.append(row)
                    log(
                        f"artifacts {label:12} {mode:8} run {run_index + 1}/{runs}: "
                        f"{row['mb_per_s']:8.1f} MB/s  peak RSS +{growth_mib:7.1f} MiB"
                    )
            (sim.output_dir / filename).unlink(missing_ok=True)
    return summarise(results, files, modes, skipped)


def summarise(
    results: list[dict[str, Any]],
    files: dict[str, tuple[str, int, int]],
    modes: list[str],
    skipped: dict[str, str],
) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for label, (_, size, _) in files.items():
        table[label] = {"size_bytes": size}
        for mode in modes:
            mine = [r for r in results if r["file"] == label and r["mode"] == mode]
            if not mine:
                table[label][mode] = {"not_measured": skipped.get(f"{label}/{mode}", "no run")}
                continue
            phases: dict[str, float] = {}
            for name in mine[0]["phases_s"]:
                phases[name] = median(r["phases_s"].get(name, 0.0) for r in mine)
            table[label][mode] = {
                "mb_per_s": median(r["mb_per_s"] for r in mine),
                "seconds": median(r["seconds"] for r in mine),
                "peak_rss_growth_mib": median(r["peak_rss_growth_mib"] for r in mine),
                "phases_s": phases,
                "runs": len(mine),
            }
    return {"description": {k: MODES[k] for k in modes}, "medians": table, "runs": results}

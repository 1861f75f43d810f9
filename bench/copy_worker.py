"""One artifact copy into S3, in its own process, reporting time and peak RSS.

Run by ``bench.artifacts`` as
``python -m bench.copy_worker MODE --endpoint E --bucket B --view-url U --filename F
--local-path P``; prints one JSON line. Modes:

``gateway``
    The gateway's own code path: :class:`comfyui_grpc.jobs.collector.ArtifactCollector`
    copying a job's output from ComfyUI ``/view`` (httpx streaming) into
    :class:`comfyui_grpc.storage.S3ArtifactStore` (``put_stream``, then the
    job manifest), exactly as a finished job is stored.
``base64``
    The original design's whole-body path: the ``/view`` body read whole,
    base64-encoded into a JSON-ready payload, decoded again and sent with one
    ``put_object``.
``plain``
    A plain upload of the same bytes from a local file, with no HTTP source:
    one ``put_object`` of the bytes read into memory up to 16 MiB, else a
    multipart upload of 8 MiB parts read from the file one after another.

Before the measured copy, a small warm-up copy through the same path loads
every module and opens every connection; then ``VmHWM`` (peak RSS) is reset
through ``/proc/self/clear_refs`` so that the peak reported is the copy's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aioboto3
import httpx
from aiobotocore.config import AioConfig

from .common import ACCESS_KEY, SECRET_KEY, MiB, proc_status_kib

PLAIN_SINGLE_LIMIT = 16 * MiB
PART_SIZE = 8 * MiB
WARMUP_FILE = "warmup.bin"


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def s3_config() -> AioConfig:
    """The settings the gateway's store uses for an S3-compatible server."""
    return AioConfig(
        region_name="us-east-1",
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": 1},
    )


@contextlib.asynccontextmanager
async def s3_client(endpoint: str) -> Any:
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    async with session.client("s3", endpoint_url=endpoint, config=s3_config()) as client:
        yield client


async def ensure_bucket(client: Any, bucket: str) -> None:
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        await client.create_bucket(Bucket=bucket)


Copy = Callable[[str, str], Awaitable[dict[str, Any]]]
"""copy(filename, key) -> details; the copy of one output file."""


async def gateway_mode(
    args: argparse.Namespace, measure: Callable[[Copy], Awaitable[None]]
) -> None:
    from comfyui_grpc.comfyui.client import ComfyUIClient
    from comfyui_grpc.comfyui.outputs import OutputFile
    from comfyui_grpc.jobs.collector import ArtifactCollector
    from comfyui_grpc.jobs.job import Job, JobSpec
    from comfyui_grpc.jobs.model import JobKind, JobState
    from comfyui_grpc.observability.metrics import Metrics
    from comfyui_grpc.storage import S3ArtifactStore, S3Settings

    settings = S3Settings(
        bucket=args.bucket,
        endpoint_url=args.endpoint,
        prefix="outputs",
        create_bucket=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    store = S3ArtifactStore(settings)
    await store.start()
    client = ComfyUIClient(args.view_url)
    collector = ArtifactCollector(store, Metrics())
    phases: dict[str, float] = {}

    def timed(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    # Phase timers around the store's steps (the behaviour is unchanged).
    store.put_stream = timed("put_stream_total", store.put_stream)  # type: ignore[method-assign,assignment]
    for name in ("_verify", "put_bytes"):
        if hasattr(store, name):
            setattr(store, name, timed(name.lstrip("_"), getattr(store, name)))

    async def copy(filename: str, key: str) -> dict[str, Any]:
        phases.clear()
        job = Job(
            str(uuid.uuid4()), JobSpec(kind=JobKind.WORKFLOW, workflow={}, workflow_sha256="")
        )
        job.uploading({"9": [OutputFile("9", filename, "", "output")]})
        await collector.collect(client, job)
        if job.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"the copy failed: {job.failure}")
        artifact = job.artifacts[0]
        return {
            "bytes": artifact.size_bytes,
            "sha256": artifact.sha256,
            "phases_s": dict(phases),
        }

    try:
        await measure(copy)
    finally:
        await client.aclose()
        await store.close()


async def base64_mode(args: argparse.Namespace, measure: Callable[[Copy], Awaitable[None]]) -> None:
    async with s3_client(args.endpoint) as s3, httpx.AsyncClient(timeout=600) as http:
        await ensure_bucket(s3, args.bucket)

        async def copy(filename: str, key: str) -> dict[str, Any]:
            params = {"filename": filename, "subfolder": "", "type": "output"}
            response = await http.get(f"{args.view_url}/view", params=params)
            response.raise_for_status()
            payload = {"filename": filename, "data": base64.b64encode(response.content).decode()}
            data = base64.b64decode(payload["data"])
            await s3.put_object(
                Bucket=args.bucket,
                Key=key,
                Body=data,
                ContentType=response.headers.get("content-type", "application/octet-stream"),
            )
            return {"bytes": len(data)}

        await measure(copy)


async def plain_mode(args: argparse.Namespace, measure: Callable[[Copy], Awaitable[None]]) -> None:
    async with s3_client(args.endpoint) as s3:
        await ensure_bucket(s3, args.bucket)

        async def copy(filename: str, key: str) -> dict[str, Any]:
            path = Path(args.local_dir) / filename
            size = path.stat().st_size
            with path.open("rb") as source:
                if size <= PLAIN_SINGLE_LIMIT:
                    await s3.put_object(Bucket=args.bucket, Key=key, Body=source.read())
                    return {"bytes": size}
                upload = await s3.create_multipart_upload(Bucket=args.bucket, Key=key)
                parts = []
                number = 1
                while chunk := source.read(PART_SIZE):
                    reply = await s3.upload_part(
                        Bucket=args.bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"ETag": reply["ETag"], "PartNumber": number})
                    number += 1
                await s3.complete_multipart_upload(
                    Bucket=args.bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": parts},
                )
            return {"bytes": size}

        await measure(copy)


MODES = {"gateway": gateway_mode, "base64": base64_mode, "plain": plain_mode}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"mode": args.mode}

    async def measure(copy: Copy) -> None:
        await copy(WARMUP_FILE, f"warmup/{uuid.uuid4().hex}.bin")
        report["peak_reset"] = reset_peak()
        report["rss_before_kib"] = proc_status_kib_self("VmRSS")
        started = time.perf_counter()
        details = await copy(args.filename, f"copies/{uuid.uuid4().hex}/{args.filename}")
        report["seconds"] = time.perf_counter() - started
        report["peak_kib"] = proc_status_kib_self("VmHWM")
        report.update(details)

    await MODES[args.mode](args, measure)
    return report


def proc_status_kib_self(field_name: str) -> int:
    import os

    return proc_status_kib(os.getpid(), field_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--view-url", required=True)
    parser.add_argument("--filename", required=True)
    parser.add_argument("--local-dir", required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()

"""Gateway memory: RSS idle, with 10,000 finished jobs tracked, and with 1000 open streams.

One gateway process (S3 storage, default settings) in front of the
simulator. Its resident set (``VmRSS``) is read from ``/proc`` at each stage:

1. idle: started, connected, nothing submitted;
2. after N tiny jobs ran to completion (N = 10,000, the number of finished
   jobs the gateway keeps in memory), at most 32 in flight at a time. They
   have no output file (EmptyImage -> PreviewAny), so the run is not spent
   copying files: each still goes through submission, progress, history and
   its manifest in S3, and stays tracked with its whole event log;
3. with 1000 ``StreamProgress`` streams open on one queued job, every one of
   them past its first message. The growth from stage 2 divided by the
   number of streams is the cost of one open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from google.protobuf import duration_pb2

from . import servers, workloads
from .common import Children, log

IN_FLIGHT = 32
STREAMS_PER_CHANNEL = 100


async def settle_rss(read: Any, seconds: float = 1.5) -> int:
    """RSS after a short pause, so that freed buffers and lazy work have settled."""
    await asyncio.sleep(seconds)
    value: int = read()
    return value


async def run_jobs(stub: pb_grpc.GenerationServiceStub, count: int) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(IN_FLIGHT)
    states: dict[str, int] = {}
    started = time.perf_counter()

    async def one(index: int) -> None:
        async with semaphore:
            request = workloads.workflow_request(workloads.preview_graph())
            reply = await stub.Generate(request, timeout=60)  # type: ignore[misc]
            result = await stub.GetResult(  # type: ignore[misc]
                pb.GetResultRequest(
                    job_id=reply.job_id, wait_timeout=duration_pb2.Duration(seconds=60)
                ),
                timeout=90,
            )
            state = job_pb2.JobState.Name(result.job.state)
            states[state] = states.get(state, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    seconds = time.perf_counter() - started
    return {"jobs": count, "seconds": seconds, "jobs_per_s": count / seconds, "states": states}


async def open_streams(
    target: str, job_id: str, count: int
) -> tuple[list[grpc.aio.Channel], list[asyncio.Task[None]], int]:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range((count + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    ready = 0
    all_ready = asyncio.Event()

    async def stream(index: int) -> None:
        nonlocal ready
        stub = pb_grpc.GenerationServiceStub(channels[index // STREAMS_PER_CHANNEL])
        call = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=600)
        async for _ in call:
            ready += 1
            if ready == count:
                all_ready.set()
            break
        # Stay subscribed: wait on the stream until cancelled.
        async for _ in call:
            pass

    tasks = [asyncio.create_task(stream(i)) for i in range(count)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_ready.wait(), 120)
    return channels, tasks, ready


async def run(
    workdir: Path, s3_endpoint: str, *, finished_jobs: int, streams: int
) -> dict[str, Any]:
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        sim = await servers.start_simulator(children, workdir, tag="sim-memory")
        gateway = await servers.start_gateway(
            children, workdir, sim.url, s3_endpoint, tag="gateway-memory"
        )
        rss = gateway.child.rss_kib
        idle = await settle_rss(rss, 2.0)
        log(f"memory: idle gateway RSS {idle / 1024:.1f} MiB")
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            jobs = await run_jobs(stub, finished_jobs)
            log(
                f"memory: {jobs['jobs']} jobs in {jobs['seconds']:.1f} s "
                f"({jobs['jobs_per_s']:.0f}/s): {jobs['states']}"
            )
            after_jobs = await settle_rss(rss)
            log(f"memory: RSS with {finished_jobs} finished jobs {after_jobs / 1024:.1f} MiB")
            gate = await workloads.hold(control, sim.url)
            reply = await stub.Generate(
                workloads.workflow_request(workloads.tiny_graph("streams")), timeout=30
            )
            before_streams = await settle_rss(rss)
            channels, tasks, ready = await open_streams(gateway.target, reply.job_id, streams)
            with_streams = await settle_rss(rss)
            log(
                f"memory: RSS with {ready}/{streams} open streams {with_streams / 1024:.1f} MiB "
                f"(+{(with_streams - before_streams) / max(ready, 1):.1f} KiB per stream)"
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream_channel in channels:
                await stream_channel.close()
            await workloads.release(control, sim.url, gate)
    return {
        "idle_rss_mib": idle / 1024,
        "finished_jobs": jobs,
        "rss_with_finished_jobs_mib": after_jobs / 1024,
        "rss_before_streams_mib": before_streams / 1024,
        "streams_requested": streams,
        "streams_open": ready,
        "rss_with_streams_mib": with_streams / 1024,
        "per_stream_kib": (with_streams - before_streams) / max(ready, 1),
    }

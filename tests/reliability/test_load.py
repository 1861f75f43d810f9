"""Load: many concurrent StreamProgress streams on a few live jobs plus a steady
Generate rate, against the gateway as its own process; then the errors (must
be none) and the drift of the gateway's resident memory.

Watchers each follow one of the newest jobs from its first event to its
terminal one, then pick another, so about ``streams`` streams are open at
any time. CI runs 150 streams for 6 s; ``--run-slow`` 1,000 streams for 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from e2e.helpers import slow_workflow
from google.protobuf import duration_pb2, struct_pb2
from support.gateway_process import GatewayProcess

TERMINAL_EVENTS = {"succeeded", "failed", "cancelled"}
MAX_RSS_DRIFT_KIB = 32 * 1024
"""Growth of the gateway's resident memory allowed after the warm-up (60 s run)."""
CHANNELS = 8
"""Streams are spread over several HTTP/2 connections, as many clients would be."""


def job_graph(index: int, steps: int, seconds_per_step: float) -> struct_pb2.Struct:
    graph = slow_workflow(steps, seconds_per_step, prefix=f"load/{index}")
    graph["1"]["inputs"]["color"] = index
    struct = struct_pb2.Struct()
    struct.update(graph)
    return struct


@dataclass
class LoadRun:
    stubs: list[pb_grpc.GenerationServiceStub]
    until: float
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    jobs: list[str] = field(default_factory=list)
    new_job: asyncio.Condition = field(default_factory=asyncio.Condition)
    errors: list[str] = field(default_factory=list)
    open_streams: int = 0
    max_open_streams: int = 0
    streams_done: int = 0
    events: int = 0
    generate_latency: list[float] = field(default_factory=list)

    def stub(self) -> pb_grpc.GenerationServiceStub:
        return self.rng.choice(self.stubs)

    async def generate(self, rate: float, steps: int, seconds_per_step: float) -> None:
        """Submit at a steady rate until ``until`` (the pacing is the load, not a wait)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while loop.time() < self.until:
            request = pb.GenerateRequest(workflow=job_graph(index, steps, seconds_per_step))
            sent = loop.time()
            try:
                response = await self.stub().Generate(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                self.errors.append(f"Generate: {exc.code().name}: {exc.details()}")
            else:
                self.generate_latency.append(loop.time() - sent)
                async with self.new_job:
                    self.jobs.append(response.job_id)
                    self.new_job.notify_all()
            index += 1
            await asyncio.sleep(max(0.0, start + index / rate - loop.time()))

    async def watch(self) -> None:
        """Follow one of the newest jobs to its end, again and again."""
        loop = asyncio.get_running_loop()
        while loop.time() < self.until:
            async with self.new_job:
                await self.new_job.wait_for(lambda: bool(self.jobs))
                job_id = self.rng.choice(self.jobs[-4:])
            await self._follow(job_id)

    async def _follow(self, job_id: str) -> None:
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        last = -1
        kinds: list[str] = []
        try:
            request = pb.StreamProgressRequest(job_id=job_id, after_sequence=0)
            async for event in self.stub().StreamProgress(request, timeout=120):
                kind = event.WhichOneof("event") or ""
                kinds.append(kind)
                self.events += 1
                if kind != "snapshot":
                    if event.sequence <= last:
                        self.errors.append(f"{job_id}: sequence {event.sequence} after {last}")
                    last = event.sequence
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"StreamProgress {job_id}: {exc.code().name}: {exc.details()}")
        finally:
            self.open_streams -= 1
        self.streams_done += 1
        if not kinds or kinds[0] != "snapshot" or kinds[-1] not in TERMINAL_EVENTS:
            self.errors.append(f"{job_id}: stream {kinds[:1]}...{kinds[-1:]} is not snapshot..end")


async def sample_rss(
    process: GatewayProcess, samples: list[tuple[float, int]], stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not stop.is_set():
        samples.append((loop.time() - start, process.rss_kib()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)  # one sample a second until told to stop


async def run_load(
    tmp_path: Path, *, seconds: float, streams: int, rate: float, warmup: float
) -> dict[str, Any]:
    simulators = [Simulator(output_dir=tmp_path / f"sim-{i}", step_seconds=0.01) for i in range(2)]
    for sim in simulators:
        await sim.start(host="127.0.0.1", port=0)
    gateway = GatewayProcess(
        [sim.url for sim in simulators],
        tmp_path,
        log_path=tmp_path / "gateway.log",
    )
    channels = []
    samples: list[tuple[float, int]] = []
    stop_sampling = asyncio.Event()
    try:
        await gateway.start(timeout=60)
        channels = [
            grpc.aio.insecure_channel(
                f"127.0.0.1:{gateway.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(CHANNELS)
        ]
        stubs = [pb_grpc.GenerationServiceStub(ch) for ch in channels]
        loop = asyncio.get_running_loop()
        started = loop.time()
        run = LoadRun(stubs=stubs, until=started + seconds)
        sampler = asyncio.create_task(sample_rss(gateway, samples, stop_sampling))
        workers = [asyncio.create_task(run.watch()) for _ in range(streams)]
        # Jobs of about a second each (5 progress events), about ``rate`` a second.
        await run.generate(rate, steps=5, seconds_per_step=0.2)
        await asyncio.wait_for(asyncio.gather(*workers), 180)
        elapsed = loop.time() - started
        stop_sampling.set()
        await sampler
        unfinished = []
        for job_id in run.jobs:
            result = await stubs[0].GetResult(
                pb.GetResultRequest(job_id=job_id, wait_timeout=duration_pb2.Duration(seconds=60)),
                timeout=70,
            )
            if result.job.state != job_pb2.JOB_STATE_SUCCEEDED:
                unfinished.append(f"{job_id} {job_pb2.JobState.Name(result.job.state)}")
        rss_after_warmup = next((kib for t, kib in samples if t >= warmup), samples[0][1])
        latencies = sorted(run.generate_latency) or [0.0]
        report = {
            "seconds": round(elapsed, 1),
            "jobs": len(run.jobs),
            "jobs_not_succeeded": unfinished,
            "streams_target": streams,
            "max_open_streams": run.max_open_streams,
            "streams_completed": run.streams_done,
            "events_received": run.events,
            "errors": run.errors[:50],
            "error_count": len(run.errors),
            "generate_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "generate_max_ms": round(1000 * latencies[-1], 1),
            "rss_start_kib": samples[0][1],
            "rss_after_warmup_kib": rss_after_warmup,
            "rss_end_kib": samples[-1][1],
            "rss_peak_kib": max(kib for _, kib in samples),
            "rss_drift_after_warmup_kib": samples[-1][1] - rss_after_warmup,
        }
    finally:
        stop_sampling.set()
        if gateway.running:
            gateway.signal(signal.SIGTERM)
            try:
                await gateway.wait(timeout=30)
            finally:
                await gateway.kill()
        for channel in channels:
            await channel.close()
        for sim in simulators:
            await sim.stop()
    text = json.dumps(report, indent=2)
    (tmp_path / "load-report.json").write_text(text + "\n")
    print(f"\nload report ({tmp_path}):\n{text}")
    return report


def check(report: dict[str, Any]) -> None:
    assert report["error_count"] == 0, report["errors"]
    assert report["jobs_not_succeeded"] == [], report["jobs_not_succeeded"]
    assert report["max_open_streams"] == report["streams_target"], report
    assert report["jobs"] > 0


@pytest.mark.timeout(120)
async def test_streams_and_generate_load_short(tmp_path: Path) -> None:
    report = await run_load(tmp_path, seconds=6, streams=150, rate=2.0, warmup=3)
    check(report)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_streams_and_generate_load_60s(tmp_path: Path) -> None:
    report = await run_load(tmp_path, seconds=60, streams=1000, rate=2.0, warmup=15)
    check(report)
    # About 20,000 streams open and close in the run: a leak of 2 KiB each would show.
    assert report["rss_drift_after_warmup_kib"] < MAX_RSS_DRIFT_KIB, report

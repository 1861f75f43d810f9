"""Submission: Generate calls/s and latency at 1, 16 and 64 concurrent callers.

Every cell (one variant at one concurrency in one run) gets a fresh server
process and starts from an empty ComfyUI queue. A gate prompt keeps the
simulator's worker busy for the whole section: submitted prompts wait in its
queue, as they do in front of a busy GPU, and what is measured is the
submission path alone. All variants send the same graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc

from . import servers, workloads
from .common import ChildFailed, Children, log, median, percentile, thin
from .pool import ComfyUIPool

LEVELS = (1, 16, 64)
CALL_TIMEOUT = 30.0
MAX_WARMUP = 30.0
MAX_WINDOW = 15.0

VARIANTS: dict[str, str] = {
    "gateway": "comfyui-grpc gateway, Generate(workflow_json)",
    "gateway_typed": "comfyui-grpc gateway, Generate(text_to_image) (informational)",
    "floor": "minimal grpc.aio forwarder to /prompt, one pooled httpx client (floor)",
    "direct": "straight to the simulator's /prompt, one pooled httpx client",
    "direct_aiohttp": "straight to the simulator's /prompt, one aiohttp session (informational)",
    "refproxy": "reference proxy: FastAPI, new httpx client per request",
    "comfy_api_proxy": "comfy-api-proxy (PyPI) POST /api/v2/jobs",
    "echo": "bare grpc.aio unary echo (ceiling)",
}

Call = Callable[[], Awaitable[None]]


@dataclass
class Cell:
    variant: str
    level: int
    run: int
    calls_per_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    completed: int = 0
    window_s: float = 0.0
    queue_depth_after: int = 0
    server_rss_kib: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "level": self.level,
            "run": self.run,
            "calls_per_s": self.calls_per_s,
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "samples": len(self.latencies),
            "window_s": self.window_s,
            "errors": self.errors,
            "first_error": self.first_error,
            "queue_depth_after": self.queue_depth_after,
            "server_rss_mib": round(self.server_rss_kib / 1024, 1),
        }


async def drive(call: Call, concurrency: int, warmup: float, duration: float) -> Cell:
    """Closed loop: ``concurrency`` callers, each calling again as soon as it is answered.

    The measuring window opens once ``warmup`` seconds have passed and every
    caller has been answered at least once (a slow server is in its steady
    state by then), and lasts ``duration`` seconds, or twice the slowest
    warm-up call if that is longer (so that a server answering in waves is
    not measured between two waves). Throughput counts the calls answered
    inside the window; latency is taken from those calls.
    """
    cell = Cell("", concurrency, 0)
    warm = [False] * concurrency
    warm_count = 0
    all_warm = asyncio.Event()
    window: list[float] = []  # [start, end] once the window is open
    slowest = [0.0]

    async def caller(index: int) -> None:
        nonlocal warm_count
        while not window or time.perf_counter() < window[1]:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                t1 = time.perf_counter()
                if window and window[0] <= t1 <= window[1]:
                    cell.errors += 1
                    cell.first_error = cell.first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.01)  # no hot loop on a failing server
                continue
            t1 = time.perf_counter()
            if not warm[index]:
                slowest[0] = max(slowest[0], t1 - t0)
                warm[index] = True
                warm_count += 1
                if warm_count == concurrency:
                    all_warm.set()
            if window and window[0] <= t1 <= window[1]:
                cell.completed += 1
                cell.latencies.append(t1 - t0)

    async def open_window() -> None:
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_warm.wait(), MAX_WARMUP)
        await asyncio.sleep(max(0.0, started + warmup - time.perf_counter()))
        now = time.perf_counter()
        length = min(MAX_WINDOW, max(duration, 2 * slowest[0]))
        window.extend((now, now + length))

    await asyncio.gather(open_window(), *(caller(i) for i in range(concurrency)))
    cell.window_s = window[1] - window[0]
    cell.calls_per_s = cell.completed / cell.window_s
    return cell


class Target:
    """A started server plus the call that exercises it."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.call: Call | None = None
        self.rss: Callable[[], int] = lambda: 0

    async def close(self) -> None:
        for closer in reversed(self.closers):
            await closer()


def grpc_call(target: Target, address: str, request: pb.GenerateRequest) -> None:
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.GenerationServiceStub(channel)

    async def call() -> None:
        await stub.Generate(request, timeout=CALL_TIMEOUT)

    async def close() -> None:
        await channel.close()

    target.call = call
    target.closers.append(close)


def http_client(target: Target) -> httpx.AsyncClient:
    """The load generator's client for the HTTP peers: one connection per caller."""
    client = httpx.AsyncClient(
        timeout=CALL_TIMEOUT,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        trust_env=False,
    )
    target.closers.append(client.aclose)
    return client


async def build_target(
    variant: str,
    level: int,
    children: Children,
    workdir: Path,
    sim: servers.Sim,
    s3_endpoint: str,
) -> Target:
    graph = workloads.submission_graph()
    target = Target()
    if variant in ("gateway", "gateway_typed"):
        # The queue here is held on purpose; the default limit of 1000 waiting
        # jobs would otherwise answer RESOURCE_EXHAUSTED mid-cell.
        server = await servers.start_gateway(
            children, workdir, sim.url, s3_endpoint, extra=["--max-queued-jobs", "1000000"]
        )
        request = (
            workloads.typed_request()
            if variant == "gateway_typed"
            else workloads.workflow_request(graph)
        )
        grpc_call(target, server.target, request)
        target.rss = server.child.rss_kib
    elif variant == "floor":
        server = await servers.start_floor(children, workdir, sim.url)
        grpc_call(target, server.target, workloads.workflow_request(graph))
        target.rss = server.child.rss_kib
    elif variant == "echo":
        server = await servers.start_echo(children, workdir)
        grpc_call(target, server.target, workloads.workflow_request(graph))
        target.rss = server.child.rss_kib
    elif variant == "direct":
        # The gateway's own ComfyUI pool: API_CONNECTIONS connections, calls gated to match.
        pool = ComfyUIPool(sim.url)
        target.closers.append(pool.aclose)
        client_id = f"bench-direct-{uuid.uuid4().hex}"

        async def direct() -> None:
            body = {"prompt": graph, "client_id": client_id, "prompt_id": str(uuid.uuid4())}
            response = await pool.post("/prompt", json.dumps(body).encode())
            if response.status_code != 200:
                raise RuntimeError(f"/prompt answered {response.status_code}")

        target.call = direct
    elif variant == "direct_aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        target.closers.append(session.close)
        client_id = f"bench-direct-{uuid.uuid4().hex}"

        async def direct_aiohttp() -> None:
            body = {"prompt": graph, "client_id": client_id, "prompt_id": str(uuid.uuid4())}
            async with session.post(f"{sim.url}/prompt", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/prompt answered {response.status}")

        target.call = direct_aiohttp
    elif variant == "refproxy":
        server = await servers.start_refproxy(children, workdir, sim.url)
        client = http_client(target)

        async def refproxy() -> None:
            response = await client.post(f"{server.target}/prompt", json={"prompt": graph})
            if response.status_code != 200:
                raise RuntimeError(f"reference proxy answered {response.status_code}")

        target.call = refproxy
        target.rss = server.child.rss_kib
    elif variant == "comfy_api_proxy":
        server = await servers.start_comfy_api_proxy(children, workdir, sim.url)
        client = http_client(target)

        async def capi() -> None:
            response = await client.post(f"{server.target}/api/v2/jobs", json={"workflow": graph})
            if response.status_code != 201:
                raise RuntimeError(f"comfy-api-proxy answered {response.status_code}")

        target.call = capi
        target.rss = server.child.rss_kib
    else:
        raise ValueError(variant)
    return target


@dataclass
class Section:
    """What every cell of the section shares."""

    workdir: Path
    sim: servers.Sim
    s3_endpoint: str
    warmup: float
    duration: float


async def run_cell(section: Section, variant: str, level: int, run: int) -> Cell:
    """One variant at one concurrency, with a fresh server and an empty ComfyUI queue."""
    sim = section.sim
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        await workloads.clear_queue(control, sim.url)
        target = await build_target(
            variant, level, children, section.workdir, sim, section.s3_endpoint
        )
        try:
            assert target.call is not None
            cell = await drive(target.call, level, section.warmup, section.duration)
            cell.server_rss_kib = target.rss()
        finally:
            await target.close()
        cell.variant, cell.run = variant, run
        cell.queue_depth_after = await workloads.queue_remaining(control, sim.url)
    return cell


INFORMATIONAL = ("gateway_typed", "direct_aiohttp")
"""Context rows, measured once at the highest concurrency only, to save time."""


async def run(
    workdir: Path,
    s3_endpoint: str,
    *,
    runs: int,
    warmup: float,
    duration: float,
    variants: list[str],
    levels: tuple[int, ...] = LEVELS,
) -> dict[str, Any]:
    cells: list[Cell] = []
    unavailable: dict[str, str] = {}
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        # One simulator for the section, its worker held by a gate prompt for
        # good; each cell starts by clearing the prompts the previous one queued.
        sim = await servers.start_simulator(children, workdir, tag="sim-submission")
        await workloads.hold(control, sim.url)
        section = Section(workdir, sim, s3_endpoint, warmup, duration)
        for run_index in range(runs):
            for variant in variants:
                if variant in unavailable or (variant in INFORMATIONAL and run_index > 0):
                    continue
                for level in levels[-1:] if variant in INFORMATIONAL else levels:
                    try:
                        cell = await run_cell(section, variant, level, run_index)
                    except ChildFailed as exc:
                        log(f"submission: {variant} could not be run: {exc}")
                        unavailable[variant] = str(exc).splitlines()[0]
                        break
                    cells.append(cell)
                    log(
                        f"submission run {run_index + 1}/{runs} {variant:16} x{level:<3} "
                        f"{cell.calls_per_s:8.1f} calls/s  p50 "
                        f"{percentile(cell.latencies, 50) * 1000:7.2f} ms  p99 "
                        f"{percentile(cell.latencies, 99) * 1000:7.2f} ms  errors {cell.errors}"
                    )
    return summarise(cells, variants, levels, unavailable)


def summarise(
    cells: list[Cell], variants: list[str], levels: tuple[int, ...], unavailable: dict[str, str]
) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant in unavailable:
            table[variant] = {"not_measured": unavailable[variant]}
            continue
        table[variant] = {}
        samples[variant] = {}
        for level in levels:
            mine = [c for c in cells if c.variant == variant and c.level == level]
            if not mine:
                continue
            pooled = [x for c in mine for x in c.latencies]
            table[variant][str(level)] = {
                "calls_per_s": median(c.calls_per_s for c in mine),
                "p50_ms": median(percentile(c.latencies, 50) * 1000 for c in mine),
                "p99_ms": median(percentile(c.latencies, 99) * 1000 for c in mine),
                "errors": sum(c.errors for c in mine),
                "first_error": next((c.first_error for c in mine if c.first_error), ""),
                "queue_depth_after": median(c.queue_depth_after for c in mine),
                "server_rss_mib": median(c.server_rss_kib / 1024 for c in mine),
                "runs": len(mine),
            }
            samples[variant][str(level)] = {
                "n": len(pooled),
                "ms": [round(x * 1000, 3) for x in thin(pooled)],
            }
    return {
        "description": {k: VARIANTS[k] for k in variants},
        "levels": list(levels),
        "medians": table,
        "runs": [c.summary() for c in cells],
        "latency_samples_ms": samples,
    }

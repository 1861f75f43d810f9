"""Fleet: the gateway's scheduler in front of several simulated GPUs.

The gateway holds jobs in its own line and hands each to the first free
backend that can run it (``--backend-prefetch`` 1: one running plus one
waiting prompt per ComfyUI). This section measures what that buys, from the
same jobs, against two references computed offline from the jobs' measured
durations:

- **greedy**: each job, in arrival order, goes to the backend that becomes
  free first (no earlier than the job arrived);
- **lower bound**: ``max(total work / capacity, longest job)``, where
  capacity is the sum of the backends' speeds (the number of backends when
  they are all alike; a backend started with ``--time-scale 2`` counts 0.5).

Durations come from the simulators' own records: every ComfyUI history entry
carries ``execution_start`` and ``execution_success`` timestamps (wall clock,
1 ms), taken when the worker starts and ends the prompt. Those are the GPU's
busy intervals. The gateway's ``Job.end_time`` also counts the upload of the
outputs to S3, which does not occupy the GPU, so it is not used for
makespans or gaps. A job's prompt id is its job id, so records and jobs join
on it; ``Job.backend`` is checked against the simulator that ran it.

Scenarios: bursts of mixed jobs (1 in 6 long, long = 8 x short) on 3 and 8
backends, and the same with one backend twice as slow; then fair share:
caller A queues a few hundred short jobs, caller B then submits 10, each
caller named by its bearer token (``--auth-token-file`` lines ``name:token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from google.protobuf import duration_pb2

from . import servers, workloads
from .common import HOST, Child, ChildFailed, Children, free_port, log, median, percentile

SECONDS_PER_STEP = 0.125
SHORT_STEPS = 2  # 0.25 s
LONG_STEPS = 16  # 2 s: 8 x short
LONG_EVERY = 6  # 1 job in 6 is long
SLOW_SCALE = 2.0
PREFETCH = 1
RESULT_WAIT = 300.0
TOKENS = {"bench": "bench-token-fleet", "caller-a": "token-caller-a", "caller-b": "token-caller-b"}

GAP_TARGET_MS = 20.0
GREEDY_FACTOR = 1.05
BOUND_FACTOR = 1.2


@dataclass
class FleetSim:
    child: Child
    url: str
    scale: float


@dataclass
class Record:
    """One job as the simulator that ran it recorded it, plus what the caller saw."""

    job_id: str
    backend: int  # index into the scenario's backends, from the simulator's history
    start: float  # wall clock, s
    end: float
    sent: float  # client's wall clock just before Generate
    created: float  # Job.create_time
    gateway_backend: str
    state: str
    long: bool = False
    caller: str = ""


async def start_sim(children: Children, workdir: Path, tag: str, scale: float) -> FleetSim:
    port = free_port()
    output = workdir / f"{tag}-output"
    output.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "comfyui_grpc.simulator",
        "--host",
        HOST,
        "--port",
        str(port),
        "--output-dir",
        str(output),
        "--step-seconds",
        "0",
        "--time-scale",
        str(scale),
        "--log-level",
        "WARNING",
    ]
    child = children.add(Child(tag, argv, workdir / "logs" / f"{tag}.log"))
    await servers.wait_log(child, "listening on")
    return FleetSim(child, f"http://{HOST}:{port}", scale)


async def wait_backends_up(metrics_url: str, urls: list[str], timeout: float = 30.0) -> None:
    """Until the gateway's /metrics says it holds a socket to every backend."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r'^comfyui_grpc_backend_up\{backend="([^"]+)"\} 1(\.0)?$', re.M)
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(metrics_url, timeout=2)).text
                if set(urls) <= {m[0] for m in pattern.findall(text)}:
                    return
            if time.monotonic() > deadline:
                raise ChildFailed(f"the gateway did not connect to all of {urls} in {timeout} s")
            await asyncio.sleep(0.1)


class Gateway:
    """A gateway in front of some simulators, with a client per caller."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)

    async def submit(self, graph: dict[str, Any], caller: str) -> tuple[str, float]:
        """Generate; retried while the backends' inventories are still loading."""
        metadata = (("authorization", f"Bearer {TOKENS[caller]}"),)
        request = pb.GenerateRequest(workflow_json=json.dumps(graph))
        for attempt in range(100):
            sent = time.time()
            try:
                reply = await self.stub.Generate(request, metadata=metadata, timeout=30)
                return reply.job_id, sent
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 99:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    async def result(self, job_id: str, caller: str) -> job_pb2.Job:
        metadata = (("authorization", f"Bearer {TOKENS[caller]}"),)
        request = pb.GetResultRequest(
            job_id=job_id, wait_timeout=duration_pb2.Duration(seconds=int(RESULT_WAIT))
        )
        reply = await self.stub.GetResult(request, metadata=metadata, timeout=RESULT_WAIT + 10)
        return reply.job

    async def close(self) -> None:
        await self.channel.close()


async def start_gateway(
    children: Children, workdir: Path, s3: str, sims: list[FleetSim], tag: str
) -> tuple[Gateway, servers.Server]:
    token_file = workdir / "fleet-tokens.txt"
    token_file.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
    metrics_port = free_port()
    urls = [s.url for s in sims]
    server = await servers.start_gateway(
        children,
        workdir,
        ",".join(urls),
        s3,
        tag=tag,
        extra=[
            "--metrics-port",
            str(metrics_port),
            "--auth-token-file",
            str(token_file),
            "--max-queued-jobs",
            "100000",
            "--backend-prefetch",
            str(PREFETCH),
        ],
    )
    await wait_backends_up(f"http://{HOST}:{metrics_port}/metrics", urls)
    gateway = Gateway(server.target)
    # Warm-up: every code path once, inventories loaded, the bucket in use.
    warm = [
        await gateway.submit(workloads.slow_graph(1, 0.01, "fleet-warm"), "bench") for _ in sims
    ]
    for job_id, _ in warm:
        await gateway.result(job_id, "bench")
    return gateway, server


async def history(client: httpx.AsyncClient, sim: FleetSim) -> dict[str, tuple[float, float]]:
    """prompt id -> (execution_start, execution_success) in wall-clock seconds."""
    data = (await client.get(f"{sim.url}/history", timeout=60)).json()
    out: dict[str, tuple[float, float]] = {}
    for prompt_id, entry in data.items():
        stamps = {
            event: body.get("timestamp")
            for event, body in (entry.get("status") or {}).get("messages", [])
        }
        start, end = stamps.get("execution_start"), stamps.get("execution_success")
        if start is not None and end is not None:
            out[prompt_id] = (start / 1000.0, end / 1000.0)
    return out


async def run_jobs(
    gateway: Gateway,
    sims: list[FleetSim],
    plan: list[tuple[str, dict[str, Any], bool]],
    *,
    senders: int,
) -> list[Record]:
    """Submit ``plan`` (caller, graph, long) in order with ``senders`` in flight,
    wait for every job, and join them with the simulators' records."""
    submitted: list[tuple[int, str, float]] = []
    cursor = iter(range(len(plan)))

    async def sender() -> None:
        for index in cursor:
            caller, graph, _ = plan[index]
            job_id, sent = await gateway.submit(graph, caller)
            submitted.append((index, job_id, sent))

    await asyncio.gather(*(sender() for _ in range(senders)))
    return await collect(gateway, sims, plan, submitted)


async def collect(
    gateway: Gateway,
    sims: list[FleetSim],
    plan: list[tuple[str, dict[str, Any], bool]],
    submitted: list[tuple[int, str, float]],
) -> list[Record]:
    semaphore = asyncio.Semaphore(64)

    async def one(index: int, job_id: str) -> job_pb2.Job:
        async with semaphore:
            return await gateway.result(job_id, plan[index][0])

    jobs = await asyncio.gather(*(one(i, j) for i, j, _ in submitted))
    async with httpx.AsyncClient(trust_env=False) as client:
        ran = [await history(client, sim) for sim in sims]
    records = []
    for (index, job_id, sent), job in zip(submitted, jobs, strict=True):
        where = [b for b, h in enumerate(ran) if job_id in h]
        backend = where[0] if where else -1
        start, end = ran[backend][job_id] if where else (math.nan, math.nan)
        records.append(
            Record(
                job_id=job_id,
                backend=backend,
                start=start,
                end=end,
                sent=sent,
                created=job.create_time.ToMicroseconds() / 1e6,
                gateway_backend=job.backend,
                state=job_pb2.JobState.Name(job.state),
                long=plan[index][2],
                caller=plan[index][0],
            )
        )
    return records


# -- offline references ------------------------------------------------------------


def greedy_makespan(
    releases: list[float], work: list[float], scales: list[float]
) -> tuple[float, list[int]]:
    """Each job in arrival order to the backend that becomes free first.

    ``work`` is each job's duration at speed 1; on backend b it takes
    ``work * scales[b]``. Ties go to the faster backend, then the lower index.
    Returns the makespan (from time 0) and each job's backend.
    """
    free = [(0.0, scales[b], b) for b in range(len(scales))]
    heapq.heapify(free)
    end_all = 0.0
    placed = []
    for release, w in sorted(zip(releases, work, strict=True)):
        at, scale, b = heapq.heappop(free)
        end = max(at, release) + w * scale
        end_all = max(end_all, end)
        placed.append(b)
        heapq.heappush(free, (end, scale, b))
    return end_all, placed


def lower_bound(work: list[float], scales: list[float]) -> float:
    capacity = sum(1.0 / s for s in scales)
    return max(sum(work) / capacity, max(work) * min(scales))


def gaps_ms(records: list[Record], backends: int) -> list[float]:
    """Next job's start - previous job's end, per backend, from the simulators' records."""
    out = []
    for b in range(backends):
        mine = sorted((r for r in records if r.backend == b), key=lambda r: r.start)
        out += [(nxt.start - prev.end) * 1000 for prev, nxt in itertools.pairwise(mine)]
    return out


# -- scenarios ----------------------------------------------------------------------


def mixed_plan(jobs: int) -> list[tuple[str, dict[str, Any], bool]]:
    """1 job in 6 long, spread evenly: jobs 0, 6, 12... are long."""
    plan = []
    for i in range(jobs):
        long = i % LONG_EVERY == 0
        steps = LONG_STEPS if long else SHORT_STEPS
        plan.append(("bench", workloads.slow_graph(steps, SECONDS_PER_STEP, "fleet"), long))
    return plan


async def burst(
    workdir: Path, s3: str, sims: list[FleetSim], name: str, jobs_per_backend: int
) -> dict[str, Any]:
    scales = [s.scale for s in sims]
    plan = mixed_plan(jobs_per_backend * len(sims))
    async with Children() as children:
        gateway, server = await start_gateway(children, workdir, s3, sims, f"gateway-{name}")
        try:
            records = await run_jobs(gateway, sims, plan, senders=8)
        finally:
            await gateway.close()
        rss = server.child.rss_kib()
    ok = [r for r in records if r.backend >= 0]
    t0 = min(r.created for r in records)
    makespan = max(r.end for r in ok) - t0
    work = [(r.end - r.start) / scales[r.backend] for r in ok]
    releases = [r.created - t0 for r in ok]
    greedy, _ = greedy_makespan(releases, work, scales)
    bound = lower_bound(work, scales)
    gaps = gaps_ms(ok, len(sims))
    url_of = {i: s.url for i, s in enumerate(sims)}
    mismatched = sum(1 for r in ok if url_of[r.backend] != r.gateway_backend)
    result = {
        "name": name,
        "backends": len(sims),
        "time_scales": scales,
        "jobs": len(plan),
        "long_jobs": sum(1 for p in plan if p[2]),
        "short_s_nominal": SHORT_STEPS * SECONDS_PER_STEP,
        "long_s_nominal": LONG_STEPS * SECONDS_PER_STEP,
        "not_run": len(records) - len(ok),
        "states": _count(r.state for r in records),
        "submit_s": max(r.created for r in records) - t0,
        "makespan_s": makespan,
        "greedy_s": greedy,
        "lower_bound_s": bound,
        "vs_greedy": makespan / greedy,
        "vs_lower_bound": makespan / bound,
        "gap_ms": {
            "median": median(gaps),
            "p95": percentile(gaps, 95),
            "max": max(gaps) if gaps else math.nan,
            "n": len(gaps),
        },
        "jobs_per_backend": [sum(1 for r in ok if r.backend == b) for b in range(len(sims))],
        "busy_s_per_backend": [
            sum(r.end - r.start for r in ok if r.backend == b) for b in range(len(sims))
        ],
        "backend_mismatches": mismatched,
        "gateway_rss_mib": round(rss / 1024, 1),
        "timeline": [
            [r.backend, round(r.start - t0, 4), round(r.end - t0, 4), int(r.long)]
            for r in sorted(ok, key=lambda r: r.start)
        ],
    }
    log(
        f"fleet {name}: makespan {makespan:.2f} s, greedy {greedy:.2f} s, bound {bound:.2f} s "
        f"({makespan / greedy:.3f}x, {makespan / bound:.3f}x); gap median "
        f"{median(gaps):.1f} ms over {len(gaps)}"
    )
    return result


async def fairness(
    workdir: Path, s3: str, sims: list[FleetSim], a_jobs: int, b_jobs: int
) -> dict[str, Any]:
    """Caller A queues ``a_jobs`` short jobs; once they are all accepted B submits ``b_jobs``."""

    def short(caller: str) -> tuple[str, dict[str, Any], bool]:
        return (caller, workloads.slow_graph(SHORT_STEPS, SECONDS_PER_STEP, "fair"), False)

    plan = [short("caller-a") for _ in range(a_jobs)] + [short("caller-b") for _ in range(b_jobs)]
    async with Children() as children:
        gateway, _ = await start_gateway(children, workdir, s3, sims, "gateway-fairness")
        try:
            submitted: list[tuple[int, str, float]] = []
            cursor = iter(range(a_jobs))

            async def sender_a() -> None:
                for index in cursor:
                    job_id, sent = await gateway.submit(plan[index][1], "caller-a")
                    submitted.append((index, job_id, sent))

            await asyncio.gather(*(sender_a() for _ in range(16)))
            for index in range(a_jobs, a_jobs + b_jobs):
                job_id, sent = await gateway.submit(plan[index][1], "caller-b")
                submitted.append((index, job_id, sent))
            records = await collect(gateway, sims, plan, submitted)
        finally:
            await gateway.close()
    ok = [r for r in records if r.backend >= 0]
    unit = median(r.end - r.start for r in ok)
    waits = {c: [(r.start - r.sent) / unit for r in ok if r.caller == c] for c in TOKENS}
    b_sent = min(r.sent for r in ok if r.caller == "caller-b")
    a_not_started = sum(1 for r in ok if r.caller == "caller-a" and r.start > b_sent)
    backends = len(sims)
    callers = 2
    # B's k-th job: each backend's running job and its prefetched one, then one
    # job per active caller per turn (its own earlier ones included), spread
    # over the backends, one other caller's job possibly first.
    fair = [(1 + PREFETCH) + (callers * k - 1) / backends for k in range(1, b_jobs + 1)]
    b_p95 = percentile(waits["caller-b"], 95)
    a_p95 = percentile(waits["caller-a"], 95)
    result = {
        "backends": backends,
        "a_jobs": a_jobs,
        "b_jobs": b_jobs,
        "not_run": len(records) - len(ok),
        "states": _count(r.state for r in records),
        "job_duration_s": unit,
        "b_wait_p50_jobs": percentile(waits["caller-b"], 50),
        "b_wait_p95_jobs": b_p95,
        "b_wait_max_jobs": max(waits["caller-b"]),
        "a_wait_p50_jobs": percentile(waits["caller-a"], 50),
        "a_wait_p95_jobs": a_p95,
        "fair_share_p95_jobs": percentile(fair, 95),
        "fair_share_jobs": fair,
        "a_not_started_when_b_came": a_not_started,
        "fifo_b_p95_jobs": (a_not_started + math.ceil(0.95 * b_jobs)) / backends,
        "b_waits_jobs": sorted(waits["caller-b"]),
        "a_waits_jobs": sorted(waits["caller-a"]),
    }
    log(
        f"fleet fairness: B p95 wait {b_p95:.2f} job-durations (fair share "
        f"{result['fair_share_p95_jobs']:.2f}), A p95 {a_p95:.2f}; job {unit * 1000:.0f} ms"
    )
    return result


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


async def run(
    workdir: Path, s3: str, *, jobs_per_backend: int, a_jobs: int, b_jobs: int = 10
) -> dict[str, Any]:
    async with Children() as children:
        normal = await asyncio.gather(
            *(start_sim(children, workdir, f"fleet-sim{i}", 1.0) for i in range(8))
        )
        slow = await start_sim(children, workdir, "fleet-sim-slow", SLOW_SCALE)
        scenarios = []
        for name, sims in (
            ("3 backends", normal[:3]),
            ("3 backends, one 2x slower", [*normal[:2], slow]),
            ("8 backends", normal[:8]),
            ("8 backends, one 2x slower", [*normal[:7], slow]),
        ):
            scenarios.append(await burst(workdir, s3, sims, name, jobs_per_backend))
        fair = await fairness(workdir, s3, normal[:3], a_jobs, b_jobs)
    return {
        "description": {
            "jobs": f"EmptyImage -> TestSlowProgress -> SaveImage; short {SHORT_STEPS} steps, "
            f"long {LONG_STEPS} steps of {SECONDS_PER_STEP} s; 1 in {LONG_EVERY} long "
            "(jobs 0, 6, 12, ... in arrival order)",
            "slow backend": f"a simulator started with --time-scale {SLOW_SCALE:g}",
            "measure": "execution start/end from each simulator's /history "
            "(execution_start / execution_success timestamps, 1 ms); arrival = Job.create_time",
            "gateway": f"--backend-prefetch {PREFETCH}, callers named by --auth-token-file",
        },
        "scenarios": scenarios,
        "fairness": fair,
    }

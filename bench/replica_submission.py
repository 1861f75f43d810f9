"""Submission with durable job state: SQLite, PostgreSQL with 1 replica and with 3.

The same workload for every variant: N concurrent callers each submit one
unmeasured job (connections up, code warm), then, all together, M more,
each caller calling again as soon as it is answered. What is measured is
Generate's answer time, as in :mod:`bench.submission`: since late binding a
job is recorded and Generate answers before any ComfyUI sees it. Jobs/s is
``N x M`` over the time from the start to the last answer.

Three simulators, each held by a gate prompt (their workers stay busy, so the
jobs wait in the gateway's line as in front of busy GPUs), serve every
variant:

- ``sqlite``: one gateway with ``--state-path`` (the write-behind SQLite
  store; Generate waits for the job's record to be committed);
- ``postgres_1``: one replica on PostgreSQL (``--state-url-file``): Generate
  puts the job in the shared line (one transaction: fair-share tags, the job,
  its first event, a ``NOTIFY``);
- ``postgres_3``: three replicas on the same PostgreSQL, each driving one
  simulator; the load generator sends call k to replica ``k mod 3``.

Every cell (variant x callers x run) gets fresh gateways and, on PostgreSQL,
an empty database. CPU seconds of the gateways, of PostgreSQL (postmaster
and backends) and of the load generator are taken over the measured part: on
2 shared cores, they say where the time goes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc

from tests.support.postgres import PostgresServer

from . import replicas, servers, workloads
from .common import (
    ChildFailed,
    Children,
    cpu_seconds,
    log,
    median,
    percentile,
    thin,
    tree_cpu_seconds,
)

VARIANTS: dict[str, str] = {
    "sqlite": "one gateway, --state-path (SQLite)",
    "postgres_1": "one gateway replica, --state-url-file (PostgreSQL)",
    "postgres_3": "three gateway replicas on one PostgreSQL, calls round-robin",
}
BACKENDS = 3
CALL_TIMEOUT = 30.0


def workload(quick: bool) -> list[tuple[int, int]]:
    """(callers, jobs per caller) per level: the same jobs for every variant."""
    if quick:
        return [(1, 50), (16, 16), (64, 4)]
    return [(1, 300), (16, 64), (64, 16)]


@dataclass
class Cell:
    variant: str
    callers: int
    jobs_per_caller: int
    run: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""
    gateway_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    waiting_after: int | None = None

    @property
    def jobs(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        jobs = max(1, self.jobs)
        return {
            "variant": self.variant,
            "callers": self.callers,
            "jobs_per_caller": self.jobs_per_caller,
            "run": self.run,
            "jobs_per_s": self.jobs / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p95_ms": percentile(self.latencies, 95) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "answered": self.jobs,
            "errors": self.errors,
            "first_error": self.first_error,
            "gateway_cpu_ms_per_job": self.gateway_cpu_s * 1000 / jobs,
            "postgres_cpu_ms_per_job": self.postgres_cpu_s * 1000 / jobs,
            "client_cpu_ms_per_job": self.client_cpu_s * 1000 / jobs,
            "waiting_in_shared_line_after": self.waiting_after,
        }


async def drive(stubs: list[pb_grpc.GenerationServiceStub], cell: Cell) -> None:
    """Each caller: one warm-up call, then (all together) its measured calls."""
    request = workloads.workflow_request(workloads.submission_graph())
    turn = itertools.count()
    go = asyncio.Event()
    warm = [0]

    async def call() -> None:
        stub = stubs[next(turn) % len(stubs)]
        await stub.Generate(request, timeout=CALL_TIMEOUT)

    async def caller() -> None:
        for _ in range(20):  # a gateway still connecting to its backends may refuse at first
            try:
                await call()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        warm[0] += 1
        if warm[0] == cell.callers:
            go.set()
        await go.wait()
        for _ in range(cell.jobs_per_caller):
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                cell.errors += 1
                cell.first_error = cell.first_error or f"{exc.code().name}: {exc.details()}"
                continue
            cell.latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(caller()) for _ in range(cell.callers)]
    await go.wait()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    cell.seconds = time.perf_counter() - started


@dataclass
class Section:
    workdir: Path
    s3_endpoint: str
    sims: list[servers.Sim]
    pg: PostgresServer | None


async def start_variant(
    section: Section, variant: str, children: Children, tag: str
) -> tuple[list[servers.Server], str]:
    """The variant's gateways, and its database URL ('' for SQLite)."""
    urls = [sim.url for sim in section.sims]
    common = ["--max-queued-jobs", "1000000"]  # the line is held on purpose
    if variant == "sqlite":
        extra = [a for url in urls[1:] for a in ("--comfyui-url", url)]
        state = ["--state-path", str(section.workdir / f"{tag}.db")]
        server = await servers.start_gateway(
            children, section.workdir, urls[0], section.s3_endpoint, tag=tag,
            extra=[*extra, *state, *common],
        )  # fmt: skip
        return [server], ""
    if section.pg is None:
        raise ChildFailed("PostgreSQL did not start")
    count = 3 if variant == "postgres_3" else 1
    url, url_file = await replicas.new_database(section.pg, section.workdir, tag)
    started = await replicas.start_replicas(
        children, section.workdir, urls, section.s3_endpoint, url_file, count,
        tag=tag, extra=common,
    )  # fmt: skip
    await replicas.until_spread(url, len(urls), count)
    return started, url


async def waiting_in_line(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM jobs WHERE waiting")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def run_cell(
    section: Section, variant: str, callers: int, jobs_per_caller: int, run: int
) -> Cell:
    cell = Cell(variant, callers, jobs_per_caller, run)
    tag = f"rs-{variant}-{callers}-{run}"
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        for sim in section.sims:
            await workloads.clear_queue(control, sim.url)
        gateways, url = await start_variant(section, variant, children, tag)
        channels = [grpc.aio.insecure_channel(g.target) for g in gateways]
        try:
            stubs = [pb_grpc.GenerationServiceStub(c) for c in channels]
            postmaster = replicas.postmaster_pid(section.pg) if url and section.pg else 0
            before = (
                sum(cpu_seconds(g.child.pid) for g in gateways),
                tree_cpu_seconds(postmaster) if postmaster else 0.0,
                time.process_time(),
            )
            await drive(stubs, cell)
            cell.gateway_cpu_s = sum(cpu_seconds(g.child.pid) for g in gateways) - before[0]
            if postmaster:
                cell.postgres_cpu_s = tree_cpu_seconds(postmaster) - before[1]
            cell.client_cpu_s = time.process_time() - before[2]
            if url:
                cell.waiting_after = await waiting_in_line(url)
        finally:
            for channel in channels:
                await channel.close()
    return cell


async def run(
    workdir: Path, s3_endpoint: str, *, runs: int, quick: bool, variants: list[str]
) -> dict[str, Any]:
    levels = workload(quick)
    cells: list[Cell] = []
    unavailable: dict[str, str] = {}
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        sims = []
        for index in range(BACKENDS):
            sim = await servers.start_simulator(children, workdir, tag=f"sim-rs{index}")
            await workloads.hold(control, sim.url)
            sims.append(sim)
        try:
            async with replicas.postgres() as pg:
                section = Section(workdir, s3_endpoint, sims, pg)
                await run_cells(section, variants, levels, runs, cells, unavailable)
        except ChildFailed as exc:  # no PostgreSQL: SQLite alone
            log(f"replica submission: {exc}")
            for variant in variants:
                if variant.startswith("postgres"):
                    unavailable[variant] = str(exc).splitlines()[0]
            section = Section(workdir, s3_endpoint, sims, None)
            await run_cells(section, variants, levels, runs, cells, unavailable)
    return summarise(cells, variants, levels, unavailable)


async def run_cells(
    section: Section,
    variants: list[str],
    levels: list[tuple[int, int]],
    runs: int,
    cells: list[Cell],
    unavailable: dict[str, str],
) -> None:
    for run_index in range(runs):
        for callers, per_caller in levels:
            # Variants take turns within a level, so none always runs on a warmer machine.
            order = variants[run_index % len(variants) :] + variants[: run_index % len(variants)]
            for variant in order:
                if variant in unavailable or any(
                    c.variant == variant and c.callers == callers and c.run == run_index
                    for c in cells
                ):
                    continue
                try:
                    cell = await run_cell(section, variant, callers, per_caller, run_index)
                except ChildFailed as exc:
                    log(f"replica submission: {variant} could not be run: {exc}")
                    unavailable[variant] = str(exc).splitlines()[0]
                    continue
                cells.append(cell)
                s = cell.summary()
                log(
                    f"replica submission run {run_index + 1}/{runs} {variant:10} "
                    f"{callers:>2}x{per_caller:<3} {s['jobs_per_s']:7.1f} jobs/s  p50 "
                    f"{s['p50_ms']:7.2f}  p95 {s['p95_ms']:7.2f}  p99 {s['p99_ms']:7.2f} ms  "
                    f"errors {cell.errors}  CPU/job gateway {s['gateway_cpu_ms_per_job']:.2f} "
                    f"postgres {s['postgres_cpu_ms_per_job']:.2f} ms"
                )


def summarise(
    cells: list[Cell],
    variants: list[str],
    levels: list[tuple[int, int]],
    unavailable: dict[str, str],
) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant in unavailable and not any(c.variant == variant for c in cells):
            table[variant] = {"not_measured": unavailable[variant]}
            continue
        table[variant], samples[variant] = {}, {}
        for callers, per_caller in levels:
            mine = [c.summary() for c in cells if c.variant == variant and c.callers == callers]
            if not mine:
                continue
            pooled = [x for c in cells if c.variant == variant and c.callers == callers
                      for x in c.latencies]  # fmt: skip
            table[variant][str(callers)] = {
                "jobs_per_caller": per_caller,
                "jobs_per_s": median(c["jobs_per_s"] for c in mine),
                # Percentiles of every run's calls together (a run at 1 caller is short).
                "p50_ms": percentile(pooled, 50) * 1000,
                "p95_ms": percentile(pooled, 95) * 1000,
                "p99_ms": percentile(pooled, 99) * 1000,
                "samples": len(pooled),
                "errors": sum(c["errors"] for c in mine),
                "first_error": next((c["first_error"] for c in mine if c["first_error"]), ""),
                "gateway_cpu_ms_per_job": median(c["gateway_cpu_ms_per_job"] for c in mine),
                "postgres_cpu_ms_per_job": median(c["postgres_cpu_ms_per_job"] for c in mine),
                "client_cpu_ms_per_job": median(c["client_cpu_ms_per_job"] for c in mine),
                "runs": len(mine),
            }
            samples[variant][str(callers)] = {
                "n": len(pooled),
                "ms": [round(x * 1000, 3) for x in thin(pooled)],
            }
    return {
        "description": {k: VARIANTS[k] for k in variants},
        "workload": {str(c): f"{c} caller(s) x {m} jobs (+1 warm-up each)" for c, m in levels},
        "backends": BACKENDS,
        "medians": table,
        "runs": [c.summary() for c in cells],
        "latency_samples_ms": samples,
    }

"""A rolling restart of gateway replicas under steady load, seen through the Python SDK.

Two replicas on one PostgreSQL drive two simulators. Callers use one SDK
client whose channel targets both replicas (``ipv4:`` address list,
``round_robin``), so a retried call goes to the other replica. While they
Generate, StreamProgress and GetResult without pause, every replica in turn
gets SIGTERM, must exit 0, and comes back on the same port under the same
``--replica-id``; the next one goes only once it serves and drives a backend
again. Then:

- no caller saw an exception: the SDK's own retries (UNAVAILABLE) and
  stream resumption absorbed every replica going away;
- every job SUCCEEDED, its updates in strictly increasing sequence to the
  terminal one;
- every job's prompt reached ComfyUI exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import AsyncClient, JobState
from comfyui_grpc_client.progress import EventKind
from e2e.helpers import slow_workflow, workflow_request
from support.gateway_process import GatewayProcess
from support.net import free_port
from support.postgres import PostgresServer

REPLICAS = 2
LEASE_SECONDS = 2.0
CALLERS = 8
ROUNDS = int(os.environ.get("ROLLING_ROUNDS", "1"))
"""Each replica is restarted this many times, one after the other (``ROLLING_ROUNDS``)."""


async def lease_owners(url: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT backend, owner FROM backend_leases WHERE expires > now()"
        )
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def job_rows(url: str, job_ids: list[str]) -> list[str]:
    """How the shared store has these jobs (for the failure message)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT job_id, state, holder, backend, waiting, (SELECT string_agg("
            "e.sequence || ':' || (e.record::json->>'state'), ' ' ORDER BY e.sequence) "
            "FROM events e WHERE e.job_id = j.job_id) FROM jobs j WHERE job_id = ANY(%s)",
            (job_ids,),
        )
        return [" ".join(map(str, row)) for row in await cursor.fetchall()]


async def until_owns_backend(url: str, replica_id: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while replica_id not in (await lease_owners(url)).values():
        assert loop.time() < deadline, f"{replica_id} drives no backend after {timeout:g} s"
        await asyncio.sleep(0.1)  # polling another process's database rows


@dataclass
class Load:
    """What the callers did and saw."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    """job id -> final state."""
    errors: list[str] = field(default_factory=list)
    resumed_streams: int = 0
    retried_submits: int = 0
    calls: Counter[str] = field(default_factory=Counter)


async def caller(client: AsyncClient, n: int, load: Load, stop: asyncio.Event) -> None:
    """Submit a job, follow it to its end, read its result; again until told to stop."""
    rng = random.Random(n)
    index = 0
    while not stop.is_set():
        index += 1
        graph = slow_workflow(rng.randint(5, 25), 0.02, prefix=f"rolling/c{n}-{index}")
        graph["1"]["inputs"]["color"] = n * 10_000 + index  # never answered from a cache
        job_id, stage = "", "Generate"
        try:
            submission = await client.submit(workflow_request(graph), timeout=60)
            job_id = submission.job_id
            load.calls["Generate"] += 1
            load.retried_submits += submission.attempts > 1
            last = 0
            terminal = None
            stage = "StreamProgress"
            async for update in client.watch(job_id, after_sequence=0, timeout=90):
                load.resumed_streams += update.resumed
                if update.kind is EventKind.SNAPSHOT:
                    continue
                if update.sequence <= last:
                    load.errors.append(f"{job_id}: sequence {update.sequence} after {last}")
                last = update.sequence
                if update.terminal:
                    terminal = update.kind
            load.calls["StreamProgress"] += 1
            stage = "GetResult"
            # With a wait: another replica's copy of the job may be a moment behind the stream.
            job = await client.get_result(job_id, wait=30, timeout=40)
            load.calls["GetResult"] += 1
            load.jobs[job_id] = job.state
            if terminal is not EventKind.SUCCEEDED or job.state is not JobState.SUCCEEDED:
                load.errors.append(
                    f"{job_id}: stream ended with {terminal}, GetResult says {job.state.name} "
                    f"{job.error}"
                )
        except Exception as exc:
            cause = exc.__cause__
            debug = cause.debug_error_string() if isinstance(cause, grpc.aio.AioRpcError) else ""
            load.errors.append(
                f"{time.time():.3f} caller {n} job {job_id or '(not accepted)'}: "
                f"{stage} raised {exc!r}: {exc} {debug}"
            )
            if job_id:
                load.jobs.setdefault(job_id, JobState.UNSPECIFIED)


def replica(
    name: str, port: int, urls: list[str], root: Path, url_file: Path, log: Path
) -> GatewayProcess:
    return GatewayProcess(
        urls,
        root / name,
        state=False,
        extra_args=[
            "--port",
            str(port),
            "--state-url-file",
            str(url_file),
            "--replica-id",
            name,
            "--lease-seconds",
            str(LEASE_SECONDS),
        ],
        log_path=log,
    )


def channel_options() -> list[tuple[str, Any]]:
    """Round robin over every replica's address; reconnect to a restarted one soon."""
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    return [
        ("grpc.service_config", json.dumps(config)),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


@pytest.mark.timeout(150)
async def test_rolling_restart_under_load(tmp_path: Path, postgres_server: PostgresServer) -> None:
    url = postgres_server.url(postgres_server.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    sims = [Simulator(output_dir=tmp_path / f"comfyui-{i}", step_seconds=0.01) for i in range(2)]
    for sim in sims:
        await sim.start(host="127.0.0.1", port=0)
    urls = [sim.url for sim in sims]
    log = tmp_path / "replicas.log"
    ports = {f"replica-{n}": free_port() for n in range(1, REPLICAS + 1)}
    processes = {
        name: replica(name, port, urls, tmp_path, url_file, log) for name, port in ports.items()
    }
    load = Load()
    stop = asyncio.Event()
    restarts: list[str] = []
    exit_codes: list[tuple[str, int]] = []
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports.values())
    started = time.monotonic()
    try:
        for process in processes.values():
            await process.start()
        for name in processes:
            await until_owns_backend(url, name)
        async with AsyncClient(target, options=channel_options()) as client:
            callers = [
                asyncio.create_task(caller(client, n, load, stop), name=f"caller {n}")
                for n in range(CALLERS)
            ]
            await asyncio.sleep(2.0)  # steady load before the first restart
            for _ in range(ROUNDS):
                for name in processes:
                    old = processes[name]
                    old.signal(signal.SIGTERM)
                    exit_codes.append((name, await old.wait(timeout=60)))
                    processes[name] = replica(name, ports[name], urls, tmp_path, url_file, log)
                    await processes[name].start()
                    await until_owns_backend(url, name)
                    restarts.append(f"{time.monotonic() - started:.1f}s {name} back")
            await asyncio.sleep(1.0)  # load on the restarted fleet too
            stop.set()
            await asyncio.wait_for(asyncio.gather(*callers), 120)
    finally:
        stop.set()
        for process in processes.values():
            if process.running:
                process.signal(signal.SIGTERM)
                exit_codes.append(("at the end", await process.wait(timeout=60)))
        for sim in sims:
            await sim.stop()

    # A prompt taken back from ComfyUI's queue before it ran (to give it to an
    # idle backend) may be submitted again; it must run once.
    submitted = Counter(p for sim in sims for p in sim.submitted_prompt_ids)
    submitted.subtract(p for sim in sims for p in sim.deleted_prompt_ids)
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "jobs": len(load.jobs),
        "calls": dict(load.calls),
        "resumed_streams": load.resumed_streams,
        "retried_submits": load.retried_submits,
        "restarts": restarts,
        "exit_codes": exit_codes,
    }
    print(f"\nrolling restart ({tmp_path}): {json.dumps(summary, indent=2)}")
    problems = list(load.errors)
    problems += [f"{name} exited {code} after SIGTERM" for name, code in exit_codes if code != 0]
    problems += [f"{j} ended {s.name}" for j, s in load.jobs.items() if s is not JobState.SUCCEEDED]
    problems += [
        f"{j} submitted {submitted[j]} times (not counting those taken back)"
        for j in load.jobs
        if submitted[j] != 1
    ]
    problems += [
        f"ComfyUI ran {p}, which no caller was given" for p in submitted.keys() - load.jobs.keys()
    ]
    unfinished = [j for j, s in load.jobs.items() if s is not JobState.SUCCEEDED]
    problems += [f"in the store: {row}" for row in await job_rows(url, unfinished)]
    assert len(restarts) == REPLICAS * ROUNDS
    assert load.jobs, "no job ran"
    assert not problems, f"{len(problems)} problem(s) (log: {log}):\n" + "\n".join(problems[:40])

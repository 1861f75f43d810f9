"""Chaos with three gateway replicas on one PostgreSQL, in front of three simulators.

Jobs are submitted with a ``request_id`` through any live replica while
replicas are SIGKILLed at random (never more than one down at a time; each
comes back after a short random pause under the same ``--replica-id``). A
client that meets an error turns to the next live replica (round robin) and
resumes ``StreamProgress`` with ``after_sequence``. Backend leases last 2 s,
so a killed replica's backends are taken over within about that.

Afterwards :func:`chaos.verify` checks every job against what ComfyUI and S3
saw (its docstring lists the rules; with no ComfyUI-side faults no job may
end other than as ComfyUI ran it); on top of that, every job must have
ended, through a stream of strictly increasing sequences ending with the
terminal event, and every replica must exit 0 on SIGTERM.

The seed is printed (``CHAOS_SEED`` replays it). CI runs 40 jobs with a few
kills; ``--run-slow`` runs 320 jobs with many more.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from support.gateway_process import GatewayProcess
from support.postgres import PostgresServer
from support.s3 import FaultProxy, MotoServer, bucket_objects, s3_env

from .chaos import (
    S3_PREFIX,
    ChaosConfig,
    ChaosMonkey,
    GatewayGroup,
    GatewayHandle,
    SimBackend,
    collect_finals,
    open_jobs,
    plan_jobs,
    report,
    run_paced,
    verify,
)

REPLICAS = 3
LEASE_SECONDS = 2.0
LIGHT_FAULTS = ("gateway_kill", "ws_drop", "latency")
"""Replica kills, and ComfyUI faults that never change what a job does."""


async def lease_owners(url: str) -> dict[str, str]:
    """Backend -> replica, for the leases in term."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT backend, owner FROM backend_leases WHERE expires > now()"
        )
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def until_spread(url: str, backends: int, timeout: float = 30.0) -> dict[str, str]:
    """Until every backend has an owner and no replica owns two."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await lease_owners(url)
        if len(found) == backends and len(set(found.values())) == backends:
            return found
        assert loop.time() < deadline, f"backends not spread over the replicas: {found}"
        await asyncio.sleep(0.1)  # polling another process's database rows


def replica_handle(
    name: str,
    backends: list[SimBackend],
    root: Path,
    url_file: Path,
    bucket: str,
    proxy: FaultProxy,
    config: ChaosConfig,
) -> GatewayHandle:
    def make() -> GatewayProcess:
        return GatewayProcess(
            [b.url for b in backends],
            root / name,
            state=False,
            extra_args=[
                "--state-url-file",
                str(url_file),
                "--replica-id",
                name,
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--s3-endpoint-url",
                proxy.endpoint,
                "--s3-bucket",
                bucket,
                "--s3-prefix",
                S3_PREFIX,
                "--s3-create-bucket",
                "--backend-lost-after",
                str(config.backend_lost_after),
            ],
            env=s3_env(),
            log_path=root / f"{name}.log",
        )

    return GatewayHandle(make, name)


async def run_replica_chaos(
    config: ChaosConfig,
    pace_seconds: float,
    tmp_path: Path,
    moto: MotoServer,
    proxy: FaultProxy,
    postgres: PostgresServer,
) -> None:
    print(f"\nreplica chaos seed: {config.seed} (CHAOS_SEED={config.seed} replays it)")
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.deadline_seconds
    url = postgres.url(postgres.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    backends = [SimBackend(f"sim-{c}", tmp_path) for c in "abc"]
    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    group = GatewayGroup(
        [
            replica_handle(f"replica-{n}", backends, tmp_path, url_file, bucket, proxy, config)
            for n in range(1, REPLICAS + 1)
        ]
    )
    monkey = ChaosMonkey(rng, config, backends, proxy.go_down, proxy.go_up, group.members)
    exit_codes: dict[str, int] = {}
    try:
        for backend in backends:
            await backend.start()
        await group.start()
        spread = await until_spread(url, len(backends))
        monkey.timeline.append(f"backends spread: {spread}")
        jobs = plan_jobs(config, rng)
        slots = asyncio.Semaphore(config.concurrency)
        stop = asyncio.Event()
        chaos = asyncio.create_task(monkey.run(stop))
        runners = asyncio.ensure_future(run_paced(group, jobs, pace_seconds, slots, deadline))
        await asyncio.wait({runners}, timeout=config.chaos_seconds)
        stop.set()
        await chaos
        await runners
        chaos_end = loop.time()

        await collect_finals(group, jobs, deadline + 30)
        still_open = await open_jobs(group, deadline + 30)
        for backend in backends:
            await backend.finish()
        for member in group.members:
            exit_codes[member.name] = await member.terminate()
        objects = await asyncio.to_thread(bucket_objects, moto.endpoint, bucket)
        problems, summary = verify(jobs, backends, objects)
    finally:
        await group.close()
        for backend in backends:
            await backend.close()

    problems += [f"ListJobs still lists {entry}" for entry in still_open]
    problems += [
        f"{name} exited {code} after SIGTERM" for name, code in exit_codes.items() if code != 0
    ]
    missing = set(config.fault_kinds) - set(monkey.injected)
    if missing:
        problems.append(f"these faults were never injected: {sorted(missing)}")
    summary.update(
        seed=config.seed,
        jobs=len(jobs),
        seconds=round(loop.time() - started, 1),
        chaos_seconds=round(chaos_end - started, 1),
        faults=dict(monkey.injected),
        replica_kills={m.name: m.kills for m in group.members},
        replica_start_seconds={
            m.name: [round(s, 2) for s in m.start_seconds] for m in group.members
        },
        client_errors=dict(group.codes),
    )
    report(tmp_path, problems, summary, monkey.timeline, f"{tmp_path}/replica-N.log")


def _seed(default: int) -> int:
    return int(os.environ.get("CHAOS_SEED", default))


# A fresh seed per session (printed in pytest's header and by the test).
RANDOM_SEED = int(os.environ.get("COMFYUI_GRPC_CHAOS_RANDOM_SEED") or time.time() % 100_000)


@pytest.mark.timeout(150)
async def test_replica_chaos_short(
    tmp_path: Path,
    moto_server: MotoServer,
    s3_proxy: FaultProxy,
    postgres_server: PostgresServer,
) -> None:
    config = ChaosConfig(
        jobs=40,
        concurrency=18,
        seed=_seed(RANDOM_SEED),
        chaos_seconds=16,
        deadline_seconds=80,
        fault_kinds=LIGHT_FAULTS,
        fault_gap=(0.5, 1.5),
        gateway_kill_gap=4.0,
        gateway_down=(0.2, 1.5),
        slow_steps=(10, 40),
    )
    await run_replica_chaos(config, 12.0, tmp_path, moto_server, s3_proxy, postgres_server)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_replica_chaos_long(
    tmp_path: Path,
    moto_server: MotoServer,
    s3_proxy: FaultProxy,
    postgres_server: PostgresServer,
) -> None:
    config = ChaosConfig(
        jobs=320,
        concurrency=24,
        seed=_seed(RANDOM_SEED),
        chaos_seconds=150,
        deadline_seconds=600,
        fault_kinds=LIGHT_FAULTS,
        fault_gap=(0.5, 2.0),
        gateway_kill_gap=5.0,
        gateway_down=(0.2, 3.0),
        slow_steps=(3, 15),
    )
    await run_replica_chaos(config, 120.0, tmp_path, moto_server, s3_proxy, postgres_server)

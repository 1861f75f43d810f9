"""Chaos: many jobs through two ComfyUI backends while ComfyUI, S3 and the gateway break.

Faults, at random but reproducible from the seed (``CHAOS_SEED`` overrides
it): WebSocket drops, HTTP 500s and latency on either simulator, a simulator
stopped and started fresh, S3 outage windows (a proxy in front of moto
resets and refuses connections) and the gateway process SIGKILLed and
restarted on its state file. Afterwards :func:`chaos.verify` checks every
job against what ComfyUI and S3 saw; its docstring lists the rules.

CI runs 50 jobs; ``--run-slow`` runs 2,000.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import pytest
from support.gateway_process import GatewayProcess
from support.s3 import FaultProxy, MotoServer, bucket_objects, s3_env

from .chaos import (
    FAULT_KINDS,
    S3_PREFIX,
    ChaosConfig,
    ChaosMonkey,
    GatewayHandle,
    SimBackend,
    collect_finals,
    open_jobs,
    plan_jobs,
    report,
    run_paced,
    verify,
)


def _seed(default: int) -> int:
    return int(os.environ.get("CHAOS_SEED", default))


async def run_chaos(
    config: ChaosConfig,
    pace_seconds: float,
    tmp_path: Path,
    moto: MotoServer,
    proxy: FaultProxy,
) -> None:
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.deadline_seconds
    backends = [SimBackend("sim-a", tmp_path), SimBackend("sim-b", tmp_path)]
    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    gateway = GatewayHandle(
        lambda: GatewayProcess(
            [b.url for b in backends],
            tmp_path,
            extra_args=[
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
            log_path=tmp_path / "gateway.log",
        )
    )
    monkey = ChaosMonkey(rng, config, backends, proxy.go_down, proxy.go_up, [gateway])
    try:
        for backend in backends:
            await backend.start()
        await gateway.start()
        jobs = plan_jobs(config, rng)
        slots = asyncio.Semaphore(config.concurrency)
        stop = asyncio.Event()
        chaos = asyncio.create_task(monkey.run(stop))
        runners = asyncio.ensure_future(run_paced(gateway, jobs, pace_seconds, slots, deadline))
        await asyncio.wait({runners}, timeout=config.chaos_seconds)
        stop.set()
        await chaos
        await runners
        chaos_end = loop.time()

        await collect_finals(gateway, jobs, deadline + 30)
        still_open = await open_jobs(gateway, deadline + 30)
        for backend in backends:
            await backend.finish()
        exit_code = await gateway.terminate()
        objects = await asyncio.to_thread(bucket_objects, moto.endpoint, bucket)
        problems, summary = verify(jobs, backends, objects)
    finally:
        await gateway.close()
        for backend in backends:
            await backend.close()

    problems += [f"ListJobs still lists {entry}" for entry in still_open]
    if exit_code != 0:
        problems.append(f"the gateway exited {exit_code} after SIGTERM")
    missing = set(FAULT_KINDS) - set(monkey.injected)
    if missing:
        problems.append(f"these faults were never injected: {sorted(missing)}")
    summary.update(
        seed=config.seed,
        jobs=len(jobs),
        seconds=round(loop.time() - started, 1),
        chaos_seconds=round(chaos_end - started, 1),
        faults=dict(monkey.injected),
        gateway_kills=gateway.kills,
        gateway_start_seconds=[round(s, 2) for s in gateway.start_seconds],
        client_errors=dict(gateway.codes),
        s3_refused_connections=proxy.refused,
    )
    report(tmp_path, problems, summary, monkey.timeline, str(tmp_path / "gateway.log"))


# Fixed seeds (schedules that once found bugs) plus a fresh one per run; the
# fresh one is printed in pytest's header ("chaos seed: N") for replaying.
FIXED_SEEDS = (13685, 92905)
RANDOM_SEED = int(os.environ.get("COMFYUI_GRPC_CHAOS_RANDOM_SEED") or time.time() % 100_000)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed", [*FIXED_SEEDS, RANDOM_SEED], ids=["fixed-a", "fixed-b", "random"])
async def test_chaos_short(
    seed: int, tmp_path: Path, moto_server: MotoServer, s3_proxy: FaultProxy
) -> None:
    config = ChaosConfig(
        jobs=50,
        concurrency=10,
        seed=_seed(seed),
        chaos_seconds=20,
        deadline_seconds=100,
    )
    await run_chaos(config, 14.0, tmp_path, moto_server, s3_proxy)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_chaos_long(tmp_path: Path, moto_server: MotoServer, s3_proxy: FaultProxy) -> None:
    config = ChaosConfig(
        jobs=2000,
        concurrency=48,
        seed=_seed(int(time.time()) % 100_000),
        chaos_seconds=600,
        deadline_seconds=1500,
        fault_gap=(0.5, 2.5),
        gateway_kill_gap=20.0,
        slow_steps=(3, 15),
    )
    await run_chaos(config, 500.0, tmp_path, moto_server, s3_proxy)

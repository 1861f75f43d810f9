"""Previews cost the other subscribers nothing: progress delay with and without preview streams.

100 subscribers follow 10 jobs (``--quick``; 20 in a full run) whose node
sends a 64x64 JPEG preview with every step, 50 ms apart. In the ``off`` runs
no stream asks for previews; in the ``on`` runs every other subscriber (50)
sets ``include_previews`` at 10 previews a second. Only the 50 subscribers
that never take previews are measured, in both runs, the way
:mod:`bench.progress` measures the relay's delay (simulator socket write ->
client decode). ComfyUI sends the same frames in both runs, so the difference
is what preview streams cost the gateway and its other streams. The goal:
progress p99 of the others within 10% of the ``off`` run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from comfyui_grpc.v1 import generation_service_pb2 as pb

from . import progress, servers
from .common import ChildFailed, Children, log, percentile

PREVIEW_FPS = 10.0
GOAL_RATIO = 1.10
VARIANTS = ("off", "on")


def scenario(quick: bool) -> progress.Scenario:
    if quick:
        return progress.Scenario("100", 10, 10, 10, 0.05, previews=True)
    return progress.Scenario("100", 20, 5, 20, 0.05, previews=True)


class PreviewRelay(progress.GrpcRelay):
    """The gateway, with every other subscriber taking previews when ``previews``."""

    def __init__(self, server: servers.Server, previews: bool) -> None:
        super().__init__(server, "gateway")
        self.previews = previews

    def takes_previews(self, index: int) -> bool:
        return self.previews and index % 2 == 1

    def request(self, sub: progress.Subscriber, index: int) -> pb.StreamProgressRequest:
        request = pb.StreamProgressRequest(job_id=sub.job_id)
        if self.takes_previews(index):
            request.include_previews = True
            request.preview_max_fps = PREVIEW_FPS
        return request

    def measured(self, index: int) -> bool:
        return index % 2 == 0  # the same half in both variants: never preview takers


async def run(workdir: Path, s3_endpoint: str, *, runs: int, quick: bool) -> dict[str, Any]:
    plan = scenario(quick)
    delays: dict[str, list[float]] = {v: [] for v in VARIANTS}
    lost: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
        try:
            sim = await servers.start_simulator(children, workdir, tag="sim-previews")
            server = await servers.start_gateway(children, workdir, sim.url, s3_endpoint)
        except ChildFailed as exc:
            log(f"previews: the gateway could not be started: {exc}")
            return {"not_measured": str(exc).splitlines()[0]}
        relays = {v: PreviewRelay(server, v == "on") for v in VARIANTS}
        try:
            await progress.run_scenario(relays["on"], sim, control, progress.WARMUP, -1)
            for run_index in range(runs):
                # Alternate which goes first, so neither always runs on a warmer gateway.
                order = VARIANTS if run_index % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    one = await progress.run_scenario(
                        relays[variant], sim, control, plan, run_index
                    )
                    delays[variant].extend(one.delays_ms)
                    lost[variant] += one.owed - one.delivered
                    s = one.summary()
                    log(
                        f"previews run {run_index + 1}/{runs} {variant:3}: others' progress "
                        f"p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  "
                        f"delivered {one.delivered}/{one.owed}"
                    )
        finally:
            for relay in relays.values():
                await relay.close()
    table = {
        v: {
            "p50_ms": percentile(delays[v], 50),
            "p99_ms": percentile(delays[v], 99),
            "samples": len(delays[v]),
            "lost": lost[v],
        }
        for v in VARIANTS
    }
    ratio = table["on"]["p99_ms"] / table["off"]["p99_ms"] if table["off"]["p99_ms"] else None
    return {
        "description": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
        "scenario": plan.describe(),
        "preview_fps": PREVIEW_FPS,
        "medians": table,
        "p99_ratio_on_off": ratio,
        "goal": f"p99 ratio <= {GOAL_RATIO}",
        "met": ratio is not None and ratio <= GOAL_RATIO,
    }

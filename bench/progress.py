"""Progress relay: delay from the simulator sending ``progress`` to a client receiving it.

The simulator (``bench.stamped_sim``) stamps each ``progress`` frame with
``time.monotonic()`` just before writing it to its WebSocket; subscribers in
this process stamp each matching event as it arrives. CLOCK_MONOTONIC is one
clock for all processes on the machine, so the difference is the relay's
delay (ComfyUI socket -> relay -> client, including the client's decoding).

Every scenario starts with the simulator held by a gate prompt: jobs are
submitted through the relay, every subscriber connects and sees its first
message, and only then is the gate released, so each subscriber is owed every
``progress`` of its job. Events owed but never received are counted as lost.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
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

RELAYS: dict[str, str] = {
    "gateway": "comfyui-grpc gateway, StreamProgress",
    "floor": "bare grpc.aio broadcast from one ComfyUI socket (baseline)",
    "refproxy": "reference proxy's WebSocket relay (FastAPI)",
    "comfy_api_proxy": "comfy-api-proxy SSE /api/v2/jobs/{id}/events",
}

TERMINAL_WS = ("execution_success", "execution_error", "execution_interrupted")
TERMINAL_SSE = ("succeeded", "failed", "canceled", "expired")
SUBSCRIBERS_PER_CHANNEL = 100
GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    subscribers_per_job: int
    steps: int
    seconds_per_step: float
    previews: bool = False
    """Whether the node sends a preview image with every step."""

    @property
    def subscribers(self) -> int:
        return self.jobs * self.subscribers_per_job

    def describe(self) -> str:
        return (
            f"{self.subscribers} subscriber(s): {self.jobs} job(s) x "
            f"{self.subscribers_per_job}, {self.steps} progress steps each, one every "
            f"{self.seconds_per_step * 1000:.0f} ms"
        )


WARMUP = Scenario("warmup", 2, 2, 3, 0.01)


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("1", 1, 1, 30, 0.05),
            Scenario("100", 10, 10, 5, 0.05),
            Scenario("1000", 1, 1000, 8, 0.25),
        ]
    # Enough samples that a p99 is not just the worst one or two: 200 per run
    # with 1 subscriber, 1000 with 100 and 12,000 with 1000.
    return [
        Scenario("1", 1, 1, 200, 0.05),
        Scenario("100", 20, 5, 10, 0.05),
        Scenario("1000", 1, 1000, 12, 0.25),
    ]


Received = tuple[str, str, str, int, float]  # job, kind, node, value, t_recv


@dataclass
class Subscriber:
    job_id: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)
    refused: str = ""
    error: str = ""
    ended: bool = False


class Relay:
    """How to submit a job to a relay and how to subscribe to its events."""

    name = ""

    def __init__(self, server: servers.Server) -> None:
        self.server = server

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def submit(self, graph: workloads.Graph) -> str:
        raise NotImplementedError

    async def subscribe(self, sub: Subscriber, index: int) -> None:
        raise NotImplementedError

    def measured(self, index: int) -> bool:
        """Whether subscriber ``index``'s delays count (all, unless a comparison says)."""
        return True


class GrpcRelay(Relay):
    def __init__(self, server: servers.Server, name: str) -> None:
        super().__init__(server)
        self.name = name
        self.channels: list[grpc.aio.Channel] = []

    def _channel(self, index: int) -> grpc.aio.Channel:
        wanted = index // SUBSCRIBERS_PER_CHANNEL
        while len(self.channels) <= wanted:
            # A private subchannel pool: each channel gets its own connection.
            options = [("grpc.use_local_subchannel_pool", 1)]
            self.channels.append(grpc.aio.insecure_channel(self.server.target, options=options))
        return self.channels[wanted]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()

    async def submit(self, graph: workloads.Graph) -> str:
        stub = pb_grpc.GenerationServiceStub(self._channel(0))
        reply = await stub.Generate(workloads.workflow_request(graph), timeout=30)
        return str(reply.job_id)

    def request(self, sub: Subscriber, index: int) -> pb.StreamProgressRequest:
        return pb.StreamProgressRequest(job_id=sub.job_id)

    async def subscribe(self, sub: Subscriber, index: int) -> None:
        stub = pb_grpc.GenerationServiceStub(self._channel(index))
        call = stub.StreamProgress(self.request(sub, index), timeout=300)
        try:
            async for event in call:
                now = time.monotonic()
                if not sub.ready.is_set():
                    sub.ready.set()  # the snapshot (gateway) or the hello (floor)
                    continue
                if event.WhichOneof("event") == "node_progress":
                    p = event.node_progress
                    sub.received.append((sub.job_id, "progress", p.node_id, p.value, now))
        except grpc.aio.AioRpcError as exc:
            sub.error = f"{exc.code().name}: {exc.details()}"
        finally:
            sub.ended = True
            sub.ready.set()


class HttpRelay(Relay):
    def __init__(self, server: servers.Server, name: str) -> None:
        super().__init__(server)
        self.name = name
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=300, sock_connect=30),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class RefProxyRelay(HttpRelay):
    async def submit(self, graph: workloads.Graph) -> str:
        assert self.session is not None
        async with self.session.post(f"{self.server.target}/prompt", json={"prompt": graph}) as r:
            r.raise_for_status()
            return str((await r.json())["prompt_id"])

    async def subscribe(self, sub: Subscriber, index: int) -> None:
        assert self.session is not None
        url = f"{self.server.target}/ws/{sub.job_id}".replace("http://", "ws://")
        try:
            async with self.session.ws_connect(url, max_msg_size=0) as ws:
                async for message in ws:
                    now = time.monotonic()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(message.data)
                    kind = data.get("type")
                    if kind == "subscribed":
                        sub.ready.set()
                    elif kind == "progress":
                        d = data["data"]
                        sub.received.append(
                            (sub.job_id, "progress", str(d["node"]), int(d["value"]), now)
                        )
                    elif kind in TERMINAL_WS:
                        break
        except (aiohttp.ClientError, TimeoutError) as exc:
            sub.error = repr(exc)
        finally:
            sub.ended = True
            sub.ready.set()


class ComfyApiProxyRelay(HttpRelay):
    async def submit(self, graph: workloads.Graph) -> str:
        assert self.session is not None
        url = f"{self.server.target}/api/v2/jobs"
        async with self.session.post(url, json={"workflow": graph}) as r:
            r.raise_for_status()
            return str((await r.json())["id"])

    async def subscribe(self, sub: Subscriber, index: int) -> None:
        assert self.session is not None
        url = f"{self.server.target}/api/v2/jobs/{sub.job_id}/events"
        try:
            async with self.session.get(url) as response:
                if response.status != 200:
                    sub.refused = f"HTTP {response.status}"
                    return
                event = ""
                async for raw in response.content:
                    now = time.monotonic()
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        if event == "status":
                            sub.ready.set()
                            if data.get("status") in TERMINAL_SSE:
                                return
                        elif event == "progress" and data.get("step") is not None:
                            # From a progress_state frame when it counts nodes, else progress.
                            kind = "state" if data.get("nodes_total") else "progress"
                            node = str(data.get("current_node"))
                            sub.received.append((sub.job_id, kind, node, int(data["step"]), now))
        except (aiohttp.ClientError, TimeoutError) as exc:
            sub.error = repr(exc)
        finally:
            sub.ended = True
            sub.ready.set()


@dataclass
class ScenarioRun:
    relay: str
    scenario: str
    run: int
    delays_ms: list[float] = field(default_factory=list)
    by_step: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    owed: int = 0
    delivered: int = 0
    refused: int = 0
    errors: int = 0
    first_problem: str = ""
    relay_rss_idle_kib: int = 0
    relay_rss_subscribed_kib: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "relay": self.relay,
            "scenario": self.scenario,
            "run": self.run,
            "p50_ms": percentile(self.delays_ms, 50),
            "p99_ms": percentile(self.delays_ms, 99),
            "max_ms": max(self.delays_ms) if self.delays_ms else math.nan,
            "owed": self.owed,
            "delivered": self.delivered,
            "lost": self.owed - self.delivered,
            "refused_streams": self.refused,
            "stream_errors": self.errors,
            "first_problem": self.first_problem,
            "relay_rss_idle_mib": round(self.relay_rss_idle_kib / 1024, 1),
            "relay_rss_subscribed_mib": round(self.relay_rss_subscribed_kib / 1024, 1),
        }


async def fetch_stamps(client: httpx.AsyncClient, sim: servers.Sim, ids: list[str]) -> list[Any]:
    response = await client.post(f"{sim.stamps_url}/stamps", json={"prompt_ids": ids}, timeout=30)
    response.raise_for_status()
    stamps: list[Any] = response.json()
    return stamps


async def wait_finished(
    control: httpx.AsyncClient, sim: servers.Sim, job_ids: list[str], budget: float
) -> None:
    """Until ComfyUI's history holds the last job (bounded by ``budget`` seconds).

    Jobs run in submission order, so the last one finishing means all did.
    """
    last = job_ids[-1]
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        response = await control.get(f"{sim.url}/history/{last}", timeout=30)
        if response.status_code == 200 and last in response.json():
            return
        await asyncio.sleep(0.5)


async def run_scenario(
    relay: Relay,
    sim: servers.Sim,
    control: httpx.AsyncClient,
    scenario: Scenario,
    run_index: int,
) -> ScenarioRun:
    result = ScenarioRun(relay.name, scenario.name, run_index)
    await control.post(f"{sim.stamps_url}/stamps/clear", timeout=30)
    gate = await workloads.hold(control, sim.url)
    job_ids = []
    for index in range(scenario.jobs):
        graph = workloads.slow_graph(
            scenario.steps,
            scenario.seconds_per_step,
            f"relay{index}",
            send_preview=scenario.previews,
        )
        job_ids.append(await relay.submit(graph))
    result.relay_rss_idle_kib = relay.server.child.rss_kib()
    # Round robin over the jobs: a relay that caps its streams still serves several jobs.
    subs = [Subscriber(job_id) for _ in range(scenario.subscribers_per_job) for job_id in job_ids]
    tasks = [asyncio.create_task(relay.subscribe(sub, i)) for i, sub in enumerate(subs)]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 120)
        await asyncio.sleep(0.5)  # comfy-api-proxy opens its ComfyUI socket after `status`
        result.relay_rss_subscribed_kib = relay.server.child.rss_kib()
        await workloads.release(control, sim.url, gate)
        budget = 60 + scenario.jobs * scenario.steps * scenario.seconds_per_step * 3
        await wait_finished(control, sim, job_ids, budget)
        # ComfyUI is done with every job: what has not arrived within a grace
        # period is not coming (a subscriber whose socket went deaf, say).
        await asyncio.wait(tasks, timeout=GRACE_SECONDS)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stamps = await fetch_stamps(control, sim, job_ids)
    sent: dict[tuple[str, str, str, int], float] = {}
    owed_per_job: dict[str, int] = {}
    for prompt_id, kind, node, value, t_send in stamps:
        sent.setdefault((prompt_id, kind, node, int(value)), float(t_send))
        if kind == "progress":
            owed_per_job[prompt_id] = owed_per_job.get(prompt_id, 0) + 1
    for index, sub in enumerate(subs):
        if not relay.measured(index):
            continue
        if sub.refused:
            result.refused += 1
            result.first_problem = result.first_problem or f"stream refused: {sub.refused}"
            continue
        if sub.error:
            result.errors += 1
            result.first_problem = result.first_problem or sub.error[:200]
        result.owed += owed_per_job.get(sub.job_id, 0)
        seen: set[tuple[str, int]] = set()
        for job_id, kind, node, value, t_recv in sub.received:
            t_send = sent.get((job_id, kind, node, value))
            if t_send is None:
                continue
            result.delays_ms.append((t_recv - t_send) * 1000)
            result.by_step.setdefault((node, value), []).append((t_recv - t_send) * 1000)
            seen.add((node, value))
        result.delivered += len(seen)
    return result


async def start_relay(
    name: str, children: Children, workdir: Path, sim: servers.Sim, s3_endpoint: str
) -> Relay:
    if name == "gateway":
        server = await servers.start_gateway(children, workdir, sim.url, s3_endpoint)
        return GrpcRelay(server, name)
    if name == "floor":
        return GrpcRelay(await servers.start_floor(children, workdir, sim.url), name)
    if name == "refproxy":
        return RefProxyRelay(await servers.start_refproxy(children, workdir, sim.url), name)
    if name == "comfy_api_proxy":
        server = await servers.start_comfy_api_proxy(children, workdir, sim.url)
        return ComfyApiProxyRelay(server, name)
    raise ValueError(name)


async def run(
    workdir: Path,
    s3_endpoint: str,
    *,
    runs: int,
    quick: bool,
    relays: list[str],
) -> dict[str, Any]:
    plan = scenarios(quick)
    results: list[ScenarioRun] = []
    unavailable: dict[str, str] = {}
    for name in relays:
        async with Children() as children, httpx.AsyncClient(trust_env=False) as control:
            try:
                sim = await servers.start_simulator(children, workdir, tag=f"sim-{name}")
                relay = await start_relay(name, children, workdir, sim, s3_endpoint)
            except ChildFailed as exc:
                log(f"progress: {name} could not be started: {exc}")
                unavailable[name] = str(exc).splitlines()[0]
                continue
            await relay.open()
            try:
                # Not recorded: loads lazily imported code (the S3 client's models,
                # say) so that no run pays for a first time.
                await run_scenario(relay, sim, control, WARMUP, -1)
                for run_index in range(runs):
                    for scenario in plan:
                        one = await run_scenario(relay, sim, control, scenario, run_index)
                        results.append(one)
                        s = one.summary()
                        log(
                            f"progress run {run_index + 1}/{runs} {name:16} {scenario.name:>5} "
                            f"subs: p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms  "
                            f"delivered {one.delivered}/{one.owed}  refused {one.refused}  "
                            f"errors {one.errors}"
                        )
            finally:
                await relay.close()
    return summarise(results, plan, relays, unavailable)


def summarise(
    results: list[ScenarioRun],
    plan: list[Scenario],
    relays: list[str],
    unavailable: dict[str, str],
) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, Any]] = {}
    for relay in relays:
        if relay in unavailable:
            table[relay] = {"not_measured": unavailable[relay]}
            continue
        table[relay] = {}
        samples[relay] = {}
        for scenario in plan:
            mine = [r for r in results if r.relay == relay and r.scenario == scenario.name]
            if not mine:
                continue
            owed = sum(r.owed for r in mine)
            delivered = sum(r.delivered for r in mine)
            # Percentiles of all runs' delays together: a run of one subscriber
            # has too few events for a p99 of its own.
            pooled = [d for r in mine for d in r.delays_ms]
            table[relay][scenario.name] = {
                "p50_ms": percentile(pooled, 50),
                "p99_ms": percentile(pooled, 99),
                "samples": len(pooled),
                "owed": owed,
                "delivered": delivered,
                "lost": owed - delivered,
                "refused_streams": max(r.refused for r in mine),
                "stream_errors": sum(r.errors for r in mine),
                "first_problem": next((r.first_problem for r in mine if r.first_problem), ""),
                "relay_rss_idle_mib": median(r.relay_rss_idle_kib / 1024 for r in mine),
                "relay_rss_subscribed_mib": median(r.relay_rss_subscribed_kib / 1024 for r in mine),
                "runs": len(mine),
            }
            samples[relay][scenario.name] = {
                "n": len(pooled),
                "ms": [round(x, 3) for x in thin(pooled)],
            }
    return {
        "description": {k: RELAYS[k] for k in relays},
        "scenarios": {s.name: s.describe() for s in plan},
        "medians": table,
        "runs": [r.summary() for r in results],
        "delay_samples_ms": samples,
    }

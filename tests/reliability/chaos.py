"""The chaos run: jobs through two simulated ComfyUI backends while everything breaks.

Pieces:

- :class:`SimBackend`: a simulator whose accepted prompt ids are time-stamped
  (:class:`Submissions`) and whose history is recorded before every stop
  (a restart loses it, as in real ComfyUI).
- :class:`GatewayHandle`: the gateway as a process, SIGKILLed and restarted
  on the same state (file or database, under the same replica id); clients
  get a fresh channel per incarnation.
- :class:`GatewayGroup`: several gateway replicas sharing one PostgreSQL;
  a client turns to the next live one (round robin) after every error.
- :class:`ChaosMonkey`: the fault schedule (WebSocket drops, HTTP 500s and
  latency on ComfyUI, backend restarts, S3 outage windows, gateway SIGKILL),
  random but reproducible from the seed.
- :func:`run_job`: a client that submits with a ``request_id`` (retrying
  through outages) and follows ``StreamProgress``, resuming with
  ``after_sequence`` after every break, on whichever gateway answers.
- :func:`verify`: the oracle, comparing every job with what the simulators
  and S3 saw. Its rules are spelled out in its docstring.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import httpx
from comfyui_grpc.simulator import Faults, Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from e2e.helpers import slow_workflow
from google.protobuf import struct_pb2, timestamp_pb2
from support.gateway_process import GatewayProcess

T = TypeVar("T")

FAIL_CLASS = "ImageInvert"
"""Both simulators raise in this node class (``Faults.fail_node_class``)."""
S3_PREFIX = "chaos"
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
FAULT_KINDS = ("ws_drop", "http_500", "latency", "backend_restart", "s3_outage", "gateway_kill")
HTTP_500_PATHS = ("/prompt", "/queue", "/history", "/view", "/interrupt")
VIEW_500_MAX_SECONDS = 3.0
"""Longest /view 500 window; the gateway retries downloads for up to a minute."""
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Codes a client may get while things break (the gateway killed, no backend up)."""
CLIENT_RETRY_SECONDS = 0.2
"""Client back-off after UNAVAILABLE/RESOURCE_EXHAUSTED from a live gateway."""
OPEN_STATES = (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_UPLOADING)


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    jobs: int
    concurrency: int
    seed: int
    chaos_seconds: float
    """Faults are injected for at most this long (less once every job has ended)."""
    deadline_seconds: float
    """Every job must have ended this long after the start."""
    fault_gap: tuple[float, float] = (0.3, 1.2)
    """Random pause between the starts of two faults."""
    gateway_kill_gap: float = 6.0
    """At least this long between two gateway kills."""
    backend_down: tuple[float, float] = (0.2, 3.0)
    s3_down: tuple[float, float] = (0.3, 2.0)
    http_500_window: tuple[float, float] = (0.2, 1.0)
    slow_steps: tuple[int, int] = (5, 25)
    seconds_per_step: float = 0.02
    backend_lost_after: float = 1.5
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    """The kinds of fault injected; each at least once."""
    gateway_down: tuple[float, float] = (0.0, 0.0)
    """How long a killed gateway replica stays down before it is started again
    (one gateway alone is restarted at once)."""
    fail_share: float = 0.1
    """The share of jobs whose workflow fails in ComfyUI."""


# -- the simulated backends ------------------------------------------------------


class Submissions(list[str]):
    """A simulator's ``submitted_prompt_ids`` that also notes when each was accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, str]] = []

    def append(self, prompt_id: str) -> None:
        self.stamps.append((time.time(), prompt_id))
        super().append(prompt_id)


@dataclass(frozen=True)
class Stop:
    snapshot_time: float
    """Just before the history snapshot was requested."""
    down_time: float
    """Just before the simulator was told to stop (after the snapshot)."""
    gone_time: float
    """Once it had stopped. Requests already on an open connection can still be
    accepted in between (by a server that will never run them)."""


def history_outcome(entry: dict[str, Any]) -> str:
    """``success``, ``error`` or ``interrupted``, as the history entry says."""
    status = entry.get("status") or {}
    names = [m[0] for m in status.get("messages") or [] if isinstance(m, list) and m]
    if "execution_interrupted" in names:
        return "interrupted"
    return str(status.get("status_str") or "unknown")


class SimBackend:
    """One simulated ComfyUI with its submission stamps, stops and history per epoch.

    Epoch ``k`` is the simulator's life between its ``k``-th and ``k+1``-th
    start; ``histories[k]`` maps prompt id -> outcome as recorded at its end.
    """

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.faults = Faults(fail_node_class=FAIL_CLASS)
        base = root / name
        self.output_dir = base / "output"
        self.sim = Simulator(
            output_dir=self.output_dir,
            input_dir=base / "input",
            temp_dir=base / "temp",
            faults=self.faults,
            step_seconds=0.01,
        )
        self.submissions = Submissions()
        self.sim.submitted_prompt_ids = self.submissions
        self.deletions = Submissions()
        self.sim.deleted_prompt_ids = self.deletions
        self.stops: list[Stop] = []
        self.histories: list[dict[str, str]] = []
        self._http = httpx.AsyncClient(timeout=10, trust_env=False)

    @property
    def url(self) -> str:
        return self.sim.url

    async def start(self) -> None:
        await self.sim.start(host="127.0.0.1", port=self.sim.port)

    @contextlib.contextmanager
    def faults_suspended(self) -> Iterator[None]:
        """Our own look at the simulator must not trip over the faults we inject."""
        self.sim.faults = Faults(fail_node_class=FAIL_CLASS)
        try:
            yield
        finally:
            self.sim.faults = self.faults

    def clear_faults(self) -> None:
        self.faults.http_500_paths.clear()
        self.faults.http_latency_seconds = 0.0
        self.faults.ws_drop_after_messages = None

    async def snapshot(self) -> dict[str, str]:
        with self.faults_suspended():
            response = await self._http.get(f"{self.url}/history")
        response.raise_for_status()
        return {pid: history_outcome(entry) for pid, entry in response.json().items()}

    async def restart(self, down_seconds: float) -> None:
        """Record the history, stop (a fresh ComfyUI comes back), wait, start."""
        snapshot_time = time.time()
        history = await self.snapshot()
        down_time = time.time()
        await self.sim.stop()
        self.stops.append(Stop(snapshot_time, down_time, time.time()))
        self.histories.append(history)
        await asyncio.sleep(down_seconds)  # the outage itself (fault injection)
        await self.start()

    async def finish(self) -> None:
        """The last epoch's history, once everything has ended."""
        self.histories.append(await self.snapshot())

    def epoch_of(self, stamp: float) -> int:
        return sum(1 for stop in self.stops if stop.gone_time < stamp)

    def output_digests(self) -> dict[str, str]:
        """Path under output/ -> sha256, for every file ComfyUI wrote."""
        return {
            path.relative_to(self.output_dir).as_posix(): hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
            for path in self.output_dir.rglob("*")
            if path.is_file()
        }

    async def close(self) -> None:
        await self.sim.stop()
        await self._http.aclose()


# -- the gateway process -----------------------------------------------------------


class ChaosTimeout(Exception):
    pass


class GatewayHandle:
    """The current gateway process and a channel to it; survives SIGKILL + restart."""

    def __init__(self, make: Callable[[], GatewayProcess], name: str = "gateway") -> None:
        self._make = make
        self.name = name
        self.process: GatewayProcess | None = None
        self._channel: grpc.aio.Channel | None = None
        self._old_channels: list[grpc.aio.Channel] = []
        self.stub: pb_grpc.GenerationServiceStub | None = None
        self.incarnation = 0
        self.kills = 0
        self.start_seconds: list[float] = []
        self._up = asyncio.Event()
        self.codes: collections.Counter[str] = collections.Counter()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    async def wait_up(self) -> None:
        await self._up.wait()

    async def start(self) -> None:
        started = time.monotonic()
        process = self._make()
        try:
            await process.start(timeout=90)
        except BaseException:
            await process.kill()
            raise
        self.start_seconds.append(time.monotonic() - started)
        self.process = process
        if self._channel is not None:
            self._old_channels.append(self._channel)
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
        self.stub = pb_grpc.GenerationServiceStub(self._channel)
        self.incarnation += 1
        self._up.set()

    async def kill(self) -> None:
        """SIGKILL. The old channel stays open (closing it would cancel the calls
        on it locally); its calls fail as the connection breaks, like a real client's."""
        self._up.clear()
        assert self.process is not None
        self.process.signal(signal.SIGKILL)
        code = await self.process.wait()
        assert code == -signal.SIGKILL, f"the gateway exited with {code} before the SIGKILL"
        self.kills += 1

    async def terminate(self) -> int:
        """SIGTERM (graceful drain) and the exit code."""
        self._up.clear()
        assert self.process is not None
        try:
            self.process.signal(signal.SIGTERM)
            return await self.process.wait(timeout=60)
        finally:
            await self.close()

    async def close(self) -> None:
        self._up.clear()
        if self.process is not None:
            await self.process.kill()
        for channel in [*self._old_channels, self._channel]:
            if channel is not None:
                await channel.close()
        self._old_channels, self._channel = [], None

    async def current(self, deadline: float) -> tuple[int, pb_grpc.GenerationServiceStub]:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._up.wait(), max(0.0, remaining))
        except TimeoutError:
            raise ChaosTimeout("the gateway did not come back before the deadline") from None
        assert self.stub is not None
        return self.incarnation, self.stub

    async def retry_after(self, exc: grpc.aio.AioRpcError, incarnation: int, what: str) -> None:
        """Record a failed call; re-raise it unless retrying is what a client should do."""
        code = exc.code()
        self.codes[f"{what} {code.name}"] += 1
        replaced = incarnation != self.incarnation or not self._up.is_set()
        if code not in RETRYABLE:
            raise exc
        if not replaced:
            await asyncio.sleep(CLIENT_RETRY_SECONDS)  # the live gateway said: retry shortly

    async def call(
        self,
        fn: Callable[[pb_grpc.GenerationServiceStub], Awaitable[T]],
        *,
        what: str,
        deadline: float,
    ) -> T:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:
                raise ChaosTimeout(f"{what} did not succeed before the deadline")
            incarnation, stub = await self.current(deadline)
            try:
                return await fn(stub)
            except grpc.aio.AioRpcError as exc:
                await self.retry_after(exc, incarnation, what)


class Gateways(Protocol):
    """What a client needs: a gateway to call, and what to do after an error."""

    codes: collections.Counter[str]

    async def current(self, deadline: float) -> tuple[Any, pb_grpc.GenerationServiceStub]: ...

    async def retry_after(self, exc: grpc.aio.AioRpcError, token: Any, what: str) -> None: ...

    async def call(
        self,
        fn: Callable[[pb_grpc.GenerationServiceStub], Awaitable[T]],
        *,
        what: str,
        deadline: float,
    ) -> T: ...


class GatewayGroup:
    """Gateway replicas sharing one PostgreSQL, as clients behind a load balancer
    see them: each call goes to the next live replica (round robin), so a call
    retried after an error lands on another one."""

    def __init__(self, members: list[GatewayHandle]) -> None:
        self.members = members
        self.codes: collections.Counter[str] = collections.Counter()
        self._turn = itertools.count()

    @property
    def kills(self) -> int:
        return sum(m.kills for m in self.members)

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def close(self) -> None:
        for member in self.members:
            await member.close()

    async def current(
        self, deadline: float
    ) -> tuple[tuple[GatewayHandle, int], pb_grpc.GenerationServiceStub]:
        loop = asyncio.get_running_loop()
        while True:
            live = [m for m in self.members if m.up]
            if live:
                member = live[next(self._turn) % len(live)]
                assert member.stub is not None
                return (member, member.incarnation), member.stub
            waits = [asyncio.ensure_future(m.wait_up()) for m in self.members]
            try:
                await asyncio.wait(
                    waits,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for wait in waits:
                    wait.cancel()
            if loop.time() >= deadline:
                raise ChaosTimeout("no gateway replica came back before the deadline")

    async def retry_after(
        self, exc: grpc.aio.AioRpcError, token: tuple[GatewayHandle, int], what: str
    ) -> None:
        member, incarnation = token
        self.codes[f"{what} {exc.code().name}"] += 1
        member.codes[f"{what} {exc.code().name}"] += 1
        if exc.code() not in RETRYABLE:
            raise exc
        if member.up and member.incarnation == incarnation:
            await asyncio.sleep(CLIENT_RETRY_SECONDS)  # a live replica said: retry shortly

    async def call(
        self,
        fn: Callable[[pb_grpc.GenerationServiceStub], Awaitable[T]],
        *,
        what: str,
        deadline: float,
    ) -> T:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:
                raise ChaosTimeout(f"{what} did not succeed before the deadline")
            token, stub = await self.current(deadline)
            try:
                return await fn(stub)
            except grpc.aio.AioRpcError as exc:
                await self.retry_after(exc, token, what)


async def open_jobs(gateway: Gateways, deadline: float) -> list[str]:
    """``job_id STATE`` of every job ListJobs still shows as queued, running or uploading."""
    found: list[str] = []
    token = ""
    for _ in range(1000):
        page = await gateway.call(
            lambda stub, t=token: stub.ListJobs(
                pb.ListJobsRequest(states=OPEN_STATES, page_size=1000, page_token=t), timeout=10
            ),
            what="ListJobs",
            deadline=deadline,
        )
        found += [f"{j.job_id} {job_pb2.JobState.Name(j.state)}" for j in page.jobs]
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("ListJobs kept returning pages")


# -- the workload -------------------------------------------------------------------


@dataclass
class ChaosJob:
    index: int
    kind: str
    """``ok`` (ComfyUI succeeds) or ``fail`` (a node of FAIL_CLASS raises)."""
    request: pb.GenerateRequest
    job_id: str = ""
    terminal_event: str = ""
    final: job_pb2.Job | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def natural(self) -> tuple[int, str]:
        """The final state and failure reason ComfyUI's own outcome calls for."""
        if self.kind == "ok":
            return job_pb2.JOB_STATE_SUCCEEDED, ""
        return job_pb2.JOB_STATE_FAILED, "EXECUTION_ERROR"


def _struct(graph: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(graph)
    return struct


def slow_graph(index: int, steps: int, seconds_per_step: float) -> dict[str, Any]:
    """EmptyImage -> TestSlowProgress -> SaveImage, its own colour (so ComfyUI's cache
    never answers for it) and file name per job."""
    graph = slow_workflow(steps, seconds_per_step, prefix=f"chaos/job{index}")
    graph["1"]["inputs"]["color"] = index
    return graph


def failing_graph(index: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": index},
        },
        "2": {"class_type": FAIL_CLASS, "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"chaos/job{index}"},
        },
    }


def plan_jobs(config: ChaosConfig, rng: random.Random) -> list[ChaosJob]:
    """``fail_share`` failing workflows (10%), 20% text-to-image, the rest slow
    raw workflows; a quarter ask to be retried elsewhere when their backend is lost."""
    jobs = []
    for index in range(config.jobs):
        envelope: dict[str, Any] = {
            "request_id": f"chaos-{config.seed}-{index}",
            "retry_on_backend_loss": rng.random() < 0.25,
            "labels": {"chaos": str(index)},
        }
        draw = rng.random()
        if draw < config.fail_share:
            kind = "fail"
            request = pb.GenerateRequest(workflow=_struct(failing_graph(index)), **envelope)
        elif draw < config.fail_share + 0.2:
            kind = "ok"
            params = pb.TextToImage(
                prompt=f"chaos {index}", width=64, height=64, steps=rng.randint(2, 6), seed=index
            )
            request = pb.GenerateRequest(text_to_image=params, **envelope)
        else:
            kind = "ok"
            graph = slow_graph(index, rng.randint(*config.slow_steps), config.seconds_per_step)
            request = pb.GenerateRequest(workflow=_struct(graph), **envelope)
        jobs.append(ChaosJob(index=index, kind=kind, request=request))
    return jobs


async def follow(gateway: Gateways, job: ChaosJob, deadline: float) -> None:
    """Read the job's events to its terminal one, resuming after every break."""
    loop = asyncio.get_running_loop()
    last = 0
    while True:
        token, stub = await gateway.current(deadline)
        request = pb.StreamProgressRequest(job_id=job.job_id, after_sequence=last)
        try:
            call = stub.StreamProgress(request, timeout=max(0.1, deadline - loop.time()))
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "snapshot":
                    continue
                if event.sequence <= last:
                    job.problems.append(f"sequence {event.sequence} after {last}")
                last = event.sequence
                if kind in TERMINAL_EVENTS:
                    job.terminal_event = kind or ""
                    return
            job.problems.append(f"the stream ended without a terminal event (after {last})")
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and loop.time() >= deadline:
                raise ChaosTimeout("the job did not end before the deadline") from exc
            await gateway.retry_after(exc, token, "StreamProgress")


async def run_job(
    gateway: Gateways, job: ChaosJob, slots: asyncio.Semaphore, deadline: float
) -> None:
    async with slots:
        try:
            response = await gateway.call(
                lambda stub: stub.Generate(job.request, timeout=15),
                what="Generate",
                deadline=deadline,
            )
            job.job_id = response.job_id
            await follow(gateway, job, deadline)
        except grpc.aio.AioRpcError as exc:
            job.problems.append(f"RPC failed: {exc.code().name}: {exc.details()}")
        except ChaosTimeout as exc:
            job.problems.append(str(exc))


async def run_paced(
    gateway: Gateways,
    jobs: list[ChaosJob],
    pace_seconds: float,
    slots: asyncio.Semaphore,
    deadline: float,
) -> None:
    """Start the jobs evenly over ``pace_seconds`` (at most ``slots`` at a time), run them all."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    step = pace_seconds / max(1, len(jobs))

    async def paced(job: ChaosJob, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - loop.time()))  # load shape
        await run_job(gateway, job, slots, deadline)

    await asyncio.gather(*(paced(job, started + i * step) for i, job in enumerate(jobs)))


async def collect_finals(gateway: Gateways, jobs: list[ChaosJob], deadline: float) -> None:
    """Each accepted job as GetResult has it now (``job.final``)."""
    for job in jobs:
        if job.job_id:
            result = await gateway.call(
                lambda stub, job_id=job.job_id: stub.GetResult(
                    pb.GetResultRequest(job_id=job_id), timeout=10
                ),
                what="GetResult",
                deadline=deadline,
            )
            job.final = result.job


def report(
    tmp_path: Path,
    problems: list[str],
    summary: dict[str, Any],
    timeline: list[str],
    logs: str,
) -> None:
    """Write ``chaos-summary.json`` and ``chaos-problems.txt``; fail on any problem."""
    seed = summary["seed"]
    text = json.dumps(summary, indent=2, sort_keys=True)
    (tmp_path / "chaos-summary.json").write_text(text + "\n")
    (tmp_path / "chaos-problems.txt").write_text(
        "\n".join([*problems, "", "timeline:", *timeline]) + "\n"
    )
    print(f"\nchaos summary ({tmp_path}):\n{text}")
    assert not problems, (
        f"{len(problems)} violation(s), seed {seed} (CHAOS_SEED={seed} replays the "
        f"schedule; logs: {logs}):\n"
        + "\n".join(problems[:40])
        + "\n\ntimeline:\n"
        + "\n".join(timeline)
        + f"\n\nsummary:\n{text}"
    )


# -- the fault schedule ------------------------------------------------------------


class ChaosMonkey:
    """Starts a random fault every ``fault_gap`` seconds until told to stop.

    The first faults are one of each kind, so even a short run sees them
    all. The same kind never overlaps itself on the same target; a gateway
    is killed at most every ``gateway_kill_gap`` seconds, and never while
    another one is down.
    """

    def __init__(
        self,
        rng: random.Random,
        config: ChaosConfig,
        backends: list[SimBackend],
        s3_down: Callable[[], None],
        s3_up: Callable[[], None],
        gateways: list[GatewayHandle],
    ) -> None:
        self.rng = rng
        self.config = config
        self.backends = backends
        self.s3_down = s3_down
        self.s3_up = s3_up
        self.gateways = gateways
        self.injected: collections.Counter[str] = collections.Counter()
        self.timeline: list[str] = []
        self._t0 = time.monotonic()
        self._active: set[tuple[str, str]] = set()
        self._last_kill = -1e9

    def _note(self, text: str) -> None:
        self.timeline.append(f"{time.monotonic() - self._t0:7.2f}s {text}")

    async def run(self, stop: asyncio.Event) -> None:
        kinds = self.config.fault_kinds
        forced = list(kinds)
        self.rng.shuffle(forced)
        tasks: list[asyncio.Task[None]] = []
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    # The random gap is the schedule; the stop signal ends it at once.
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(*self.config.fault_gap))
                if stop.is_set():
                    break
                kind = forced.pop() if forced else self.rng.choice(kinds)
                target = self.rng.choice(self.backends)
                key = (kind, "gateway" if kind in ("gateway_kill", "s3_outage") else target.name)
                if key in self._active:
                    continue
                if kind == "gateway_kill":
                    if time.monotonic() - self._last_kill < self.config.gateway_kill_gap:
                        continue
                    self._last_kill = time.monotonic()
                self._active.add(key)
                tasks.append(asyncio.create_task(self._inject(kind, target, key)))
        finally:
            await asyncio.gather(*tasks)
            self.heal()

    def heal(self) -> None:
        for backend in self.backends:
            backend.clear_faults()
        self.s3_up()
        self._note("healed")

    async def _inject(self, kind: str, backend: SimBackend, key: tuple[str, str]) -> None:
        rng = self.rng
        self.injected[kind] += 1
        try:
            match kind:
                case "ws_drop":
                    after = rng.randint(2, 30)
                    self._note(f"{backend.name}: drop sockets after {after} frames")
                    backend.faults.ws_drop_after_messages = after
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    backend.faults.ws_drop_after_messages = None
                case "http_500":
                    paths = set(rng.sample(HTTP_500_PATHS, rng.randint(1, 3)))
                    window = rng.uniform(*self.config.http_500_window)
                    if "/view" in paths:
                        window = min(window, VIEW_500_MAX_SECONDS)
                    self._note(f"{backend.name}: HTTP 500 on {sorted(paths)} for {window:.2f}s")
                    backend.faults.http_500_paths.update(paths)
                    await asyncio.sleep(window)
                    backend.faults.http_500_paths.clear()
                case "latency":
                    delay = rng.uniform(0.02, 0.3)
                    self._note(f"{backend.name}: {delay:.2f}s HTTP latency")
                    backend.faults.http_latency_seconds = delay
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    backend.faults.http_latency_seconds = 0.0
                case "backend_restart":
                    down = rng.uniform(*self.config.backend_down)
                    self._note(f"{backend.name}: restart, down {down:.2f}s")
                    await backend.restart(down)
                case "s3_outage":
                    down = rng.uniform(*self.config.s3_down)
                    self._note(f"S3 outage {down:.2f}s")
                    self.s3_down()
                    await asyncio.sleep(down)
                    self.s3_up()
                case "gateway_kill":
                    await self._kill_gateway()
        finally:
            self._active.discard(key)

    async def _kill_gateway(self) -> None:
        """SIGKILL one gateway; one alone comes back at once, a replica after a pause."""
        if len(self.gateways) == 1:
            gateway, down = self.gateways[0], 0.0
        else:
            gateway = self.rng.choice(self.gateways)
            down = self.rng.uniform(*self.config.gateway_down)
        self._note(f"{gateway.name} SIGKILL, down {down:.2f}s")
        await gateway.kill()
        if down:
            await asyncio.sleep(down)  # the outage itself (fault injection)
        await gateway.start()
        self._note(f"{gateway.name} back (incarnation {gateway.incarnation})")


# -- the oracle ----------------------------------------------------------------------


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


@dataclass(frozen=True)
class Submission:
    backend: SimBackend
    stamp: float


def submissions_of(backends: list[SimBackend]) -> dict[str, list[Submission]]:
    found: dict[str, list[Submission]] = collections.defaultdict(list)
    for backend in backends:
        for stamp, prompt_id in backend.submissions.stamps:
            found[prompt_id].append(Submission(backend, stamp))
    for subs in found.values():
        subs.sort(key=lambda s: s.stamp)
    return found


def verify(
    jobs: list[ChaosJob],
    backends: list[SimBackend],
    objects: dict[str, bytes],
) -> tuple[list[str], dict[str, Any]]:
    """Every violation found, and a summary of the outcomes.

    With ``subs`` a job's submissions in time order (from both simulators'
    accepted prompt ids) and ``E`` the job's end time, a stop of backend ``X``
    *disrupts* the job when some submission to ``X`` came before ``X`` was
    gone and ``E`` is after ``X``'s history was recorded for that stop.

    1. Every job was accepted, followed to a terminal event that matches its
       final state, with strictly increasing sequence numbers.
    2. Not disrupted: the final state is what ComfyUI did, and the history
       of the backend it last ran on says the same (``success`` ->
       SUCCEEDED, ``error`` -> FAILED/EXECUTION_ERROR in the failing node).
    3. Disrupted: that, or FAILED with BACKEND_LOST or OUTPUT_MISSING; a
       history entry found for its last submission must still agree. A job
       ComfyUI never accepted may only be BACKEND_LOST, and only if a backend
       was restarted during its life.
    4. Never STORAGE_FAILED, INTERRUPTED or CANCELLED (S3 outages are shorter
       than the store's retry budget; nothing cancels or interrupts).
    5. SUCCEEDED: at least one artifact; each is in S3 under
       ``chaos/{job_id}/`` with the recorded size and sha256, and that sha256
       is the one of the file ComfyUI wrote on the backend the job names; the
       job's manifest in S3 says ``succeeded`` with the same artifacts.
    6. No prompt submitted twice: between any two submissions of a job, the
       backend of the earlier one began to stop (a restarted ComfyUI has no
       queue or history, so the job was lost there), or deleted it from its
       pending queue (the gateway took it back before it ran, to give it to a
       backend with room). Every prompt id ComfyUI accepted belongs to a job
       a client was given.
    7. S3 holds nothing outside ``chaos/{job id}/``.
    """
    problems: list[str] = []
    by_url = {b.url: b for b in backends}
    subs_by_id = submissions_of(backends)
    known = {job.job_id for job in jobs if job.job_id}
    digests = {backend.url: backend.output_digests() for backend in backends}
    outcomes: collections.Counter[str] = collections.Counter()
    disrupted_count = 0
    resubmitted = 0

    for prompt_id in subs_by_id:
        if prompt_id not in known:
            problems.append(f"ComfyUI ran prompt {prompt_id}, which no client was given")
    for key in objects:
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != S3_PREFIX or parts[1] not in known:
            problems.append(f"S3 object {key!r} is outside chaos/<job id>/")

    for job in jobs:
        where = f"job #{job.index} {job.job_id or '(never accepted)'} ({job.kind})"
        problems.extend(f"{where}: {p}" for p in job.problems)
        final = job.final
        if not job.job_id or final is None:
            problems.append(f"{where}: no final state")
            continue
        state = job_pb2.JobState.Name(final.state)
        reason = final.error.reason
        outcomes[f"{state.removeprefix('JOB_STATE_')} {reason}".strip()] += 1
        if state.removeprefix("JOB_STATE_").lower() != job.terminal_event:
            problems.append(
                f"{where}: final {state} but the stream ended with {job.terminal_event!r}"
            )
        subs = subs_by_id.get(job.job_id, [])
        end = _seconds(final.end_time)
        disrupted = any(
            stop.gone_time > sub.stamp and end > stop.snapshot_time
            for sub in subs
            for stop in sub.backend.stops
        )
        disrupted_count += disrupted
        resubmitted += len(subs) > 1

        # 6: each resubmission only after the backend holding it was stopped.
        for earlier, later in itertools.pairwise(subs):
            taken_back = any(
                prompt_id == job.job_id and earlier.stamp <= stamp <= later.stamp
                for stamp, prompt_id in earlier.backend.deletions.stamps
            )
            if not taken_back and not any(
                earlier.stamp < stop.gone_time and stop.down_time <= later.stamp
                for stop in earlier.backend.stops
            ):
                problems.append(
                    f"{where}: submitted twice, to {earlier.backend.name} and then "
                    f"{later.backend.name}, though {earlier.backend.name} was not restarted "
                    "in between"
                )

        # 2-4: the final state against ComfyUI's own outcome.
        natural_state, natural_reason = job.natural
        natural = final.state == natural_state and reason == natural_reason
        last_entry = None
        if subs:
            last = subs[-1]
            epoch = last.backend.epoch_of(last.stamp)
            if epoch < len(last.backend.histories):
                last_entry = last.backend.histories[epoch].get(job.job_id)
        expected_entry = "success" if job.kind == "ok" else "error"
        if not subs:
            # Handed to a backend whose answer was lost, then lost with it while no
            # backend was up to take it: BACKEND_LOST without ComfyUI ever holding it.
            restarted_meanwhile = any(
                _seconds(final.create_time) < stop.gone_time and stop.snapshot_time < end
                for backend in backends
                for stop in backend.stops
            )
            if not (restarted_meanwhile and reason == "BACKEND_LOST"):
                problems.append(
                    f"{where}: ComfyUI never accepted it, yet it ended {state} {reason}"
                )
        elif natural:
            if last_entry is None and not disrupted:
                problems.append(f"{where}: ended {state} but no history entry on its backend")
            elif last_entry is not None and last_entry != expected_entry:
                problems.append(f"{where}: ended {state} but ComfyUI's history says {last_entry}")
        elif disrupted and reason in ("BACKEND_LOST", "OUTPUT_MISSING"):
            pass
        else:
            problems.append(
                f"{where}: ended {state} {reason} ({final.error.message!r}); ComfyUI's history "
                f"says {last_entry}, disrupted by a backend restart: {disrupted}"
            )
        failed_in = final.error.class_type
        if reason == "EXECUTION_ERROR" and failed_in != FAIL_CLASS:
            problems.append(f"{where}: failed in {failed_in}, not {FAIL_CLASS}")

        # 5: artifacts in S3, as recorded and as ComfyUI wrote them.
        if final.state == job_pb2.JOB_STATE_SUCCEEDED:
            problems.extend(
                f"{where}: {p}" for p in _check_artifacts(job, final, objects, digests, by_url)
            )

    # A trace of each job with a problem: when ComfyUI took it, stops, its end.
    origin = min((sub.stamp for subs in subs_by_id.values() for sub in subs), default=0.0)
    for job in jobs:
        if job.final is None or not any(job.job_id in p for p in problems):
            continue
        trace = [
            f"{sub.stamp - origin:.3f}s submitted to {sub.backend.name}"
            for sub in subs_by_id.get(job.job_id, [])
        ]
        for backend in backends:
            trace += [
                f"{stop.snapshot_time - origin:.3f}s-{stop.gone_time - origin:.3f}s "
                f"{backend.name} stopped"
                for stop in backend.stops
            ]
        trace.append(f"{_seconds(job.final.end_time) - origin:.3f}s ended on {job.final.backend}")
        problems.append(f"trace of {job.job_id}: " + "; ".join(sorted(trace, key=_lead_float)))

    summary = {
        "outcomes": dict(outcomes),
        "disrupted_jobs": disrupted_count,
        "resubmitted_jobs": resubmitted,
        "stops": {b.name: len(b.stops) for b in backends},
        "submissions": {b.name: len(b.submissions) for b in backends},
        "s3_objects": len(objects),
    }
    return problems, summary


def _lead_float(text: str) -> float:
    return float(text.split("s", 1)[0])


def _check_artifacts(
    job: ChaosJob,
    final: job_pb2.Job,
    objects: dict[str, bytes],
    digests: dict[str, dict[str, str]],
    by_url: dict[str, SimBackend],
) -> list[str]:
    problems = []
    if not final.artifacts:
        problems.append("succeeded without artifacts")
    if final.backend not in by_url:
        problems.append(f"names backend {final.backend!r}, which is neither simulator")
        return problems
    written = digests[final.backend]
    for artifact in final.artifacts:
        if not artifact.key.startswith(f"{S3_PREFIX}/{final.job_id}/"):
            problems.append(f"artifact key {artifact.key!r} is outside chaos/{final.job_id}/")
        body = objects.get(artifact.key)
        if body is None:
            problems.append(f"artifact {artifact.key} is not in S3")
            continue
        digest = hashlib.sha256(body).hexdigest()
        if digest != artifact.sha256 or len(body) != artifact.size_bytes:
            problems.append(
                f"artifact {artifact.key}: S3 has {len(body)} bytes sha256 {digest}, "
                f"recorded {artifact.size_bytes} bytes sha256 {artifact.sha256}"
            )
        # The job's own file: templates save under comfyui-grpc/{job_id}/, the raw
        # workflows here as chaos/job{index}_NNNNN_.png.
        own = [
            path
            for path, digest in written.items()
            if path.rsplit("/", 1)[-1] == artifact.filename
            and digest == artifact.sha256
            and (f"/{final.job_id}/" in path or path.startswith(f"chaos/job{job.index}_"))
        ]
        if not own:
            problems.append(
                f"artifact {artifact.filename}: sha256 {artifact.sha256} is not that of the "
                f"file ComfyUI wrote for the job on {final.backend}"
            )
    raw = objects.get(f"{S3_PREFIX}/{final.job_id}/manifest.json")
    if raw is None:
        problems.append("no manifest.json in S3")
        return problems
    manifest = json.loads(raw)
    if manifest.get("state") != "succeeded":
        problems.append(f"the manifest says {manifest.get('state')!r}")
    listed = {(a["key"], a["sha256"], a["size_bytes"]) for a in manifest.get("artifacts", [])}
    recorded = {(a.key, a.sha256, a.size_bytes) for a in final.artifacts}
    if listed != recorded:
        problems.append(f"the manifest lists {sorted(listed)}, the job {sorted(recorded)}")
    return problems

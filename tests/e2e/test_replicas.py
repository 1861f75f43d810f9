"""Two gateway replicas sharing one PostgreSQL, in front of two simulators:
any replica answers any RPC for any job.

Jobs are submitted to replica 1 and followed, cancelled and read on
replica 2; each backend is driven by exactly one replica (the lease table
says which), and every prompt reaches ComfyUI once.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import psycopg
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from comfyui_grpc_client import parse_callback
from support.callback_receiver import CallbackReceiver
from support.gateway_process import GatewayProcess
from support.postgres import PostgresServer

from .helpers import event_kind, preview_workflow, slow_workflow, small_image, workflow_request

LEASE_SECONDS = 2.0


async def owners(url: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT backend, owner FROM backend_leases WHERE expires > now()"
        )
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def until_spread(url: str, backends: int, replicas: int, timeout: float = 30.0) -> None:
    """Until every backend has an owner and every replica owns one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await owners(url)
        if len(found) == backends and len(set(found.values())) == replicas:
            return
        assert loop.time() < deadline, f"backends not spread over the replicas: {found}"
        await asyncio.sleep(0.1)


def replica(
    urls: list[str],
    root: Path,
    url_file: Path,
    name: str,
    log: Path,
    extra: Sequence[str] = (),
) -> GatewayProcess:
    return GatewayProcess(
        urls,
        root,
        state=False,
        extra_args=[
            "--state-url-file",
            str(url_file),
            "--replica-id",
            name,
            "--lease-seconds",
            str(LEASE_SECONDS),
            *extra,
        ],
        log_path=log,
    )


@pytest.fixture
async def two_simulators(tmp_path: Path) -> AsyncIterator[list[Simulator]]:
    sims = [Simulator(output_dir=tmp_path / f"comfyui-{i}", step_seconds=0.01) for i in range(2)]
    for sim in sims:
        await sim.start(host="127.0.0.1", port=0)
    try:
        yield sims
    finally:
        for sim in sims:
            await sim.stop()


async def holder_of(url: str, job_id: str) -> str:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT holder FROM jobs WHERE job_id = %s", (job_id,))
        row = await cursor.fetchone()
        assert row is not None
        return str(row[0])


async def read_artifact(stub: pb_grpc.GenerationServiceStub, job_id: str, name: str) -> bytes:
    data = b""
    async for part in stub.ReadArtifact(
        pb.ReadArtifactRequest(job_id=job_id, artifact=name), timeout=30
    ):
        data += part.chunk
    return data


async def test_any_replica_answers_for_any_job(
    two_simulators: list[Simulator], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.url(postgres_server.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    log = tmp_path / "replicas.log"
    urls = [sim.url for sim in two_simulators]
    first = replica(urls, tmp_path, url_file, "replica-1", log)
    second = replica(urls, tmp_path, url_file, "replica-2", log)
    await first.start()
    await second.start()
    try:
        await until_spread(url, backends=2, replicas=2)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
        ):
            on_first = pb_grpc.GenerationServiceStub(one)
            on_second = pb_grpc.GenerationServiceStub(two)
            # Enough jobs that both backends (so both replicas) run some.
            jobs = [
                (
                    await on_first.Generate(
                        workflow_request(
                            slow_workflow(6, 0.02, prefix=f"r{i}"), request_id=f"job-{i}"
                        ),
                        timeout=10,
                    )
                ).job_id
                for i in range(6)
            ]
            streams = [
                [
                    e
                    async for e in on_second.StreamProgress(
                        pb.StreamProgressRequest(job_id=job_id, after_sequence=0), timeout=60
                    )
                ]
                for job_id in jobs[:1]
            ]
            for job_id in jobs:
                result = await on_second.GetResult(
                    pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
                )
                assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
                assert result.job.artifacts
            # The whole stream, seen from the replica that did not take the Generate.
            for job_id, events in zip(jobs, streams, strict=False):
                kinds = [event_kind(e) for e in events]
                assert kinds[0] == "snapshot"
                sequences = [e.sequence for e in events[1:]]
                assert sequences == sorted(sequences)
                assert len(set(sequences)) == len(sequences)
                assert "started" in kinds
                assert "node_progress" in kinds
                assert kinds[-1] == "succeeded", kinds
                # The same stream replayed on either replica, from any sequence.
                middle = sequences[len(sequences) // 2]
                for stub in (on_first, on_second):
                    replay = [
                        e.sequence
                        async for e in stub.StreamProgress(
                            pb.StreamProgressRequest(job_id=job_id, after_sequence=middle),
                            timeout=30,
                        )
                    ][1:]
                    assert replay == [s for s in sequences if s > middle]
            # Artifacts read through either replica are the same bytes.
            result = await on_second.GetResult(pb.GetResultRequest(job_id=jobs[0]), timeout=10)
            artifact = result.job.artifacts[0]
            for stub in (on_first, on_second):
                data = await read_artifact(stub, jobs[0], artifact.key)
                assert hashlib.sha256(data).hexdigest() == artifact.sha256
            # Either replica lists every job, whichever replica ran it.
            for stub in (on_first, on_second):
                listed = await stub.ListJobs(
                    pb.ListJobsRequest(states=[job_pb2.JOB_STATE_SUCCEEDED]), timeout=10
                )
                assert set(jobs) <= {j.job_id for j in listed.jobs}
            # A request_id repeated on the other replica is the same job.
            again = await on_second.Generate(
                workflow_request(slow_workflow(6, 0.02, prefix="r0"), request_id="job-0"),
                timeout=10,
            )
            assert again.job_id == jobs[0]
            assert again.deduplicated
            # Both replicas drove a backend: each ran some of the jobs.
            ran = [sum(sim.submitted_prompt_ids.count(j) for j in jobs) for sim in two_simulators]
            assert all(ran), ran
            # A job waiting in the shared line, cancelled through the other replica.
            blockers = [
                (
                    await on_first.Generate(
                        workflow_request(slow_workflow(200, 0.02, prefix=f"b{i}")), timeout=10
                    )
                ).job_id
                for i in range(6)
            ]
            waiting = (await on_first.Generate(small_image("never run"), timeout=10)).job_id
            cancelled = await on_second.CancelJob(pb.CancelJobRequest(job_id=waiting), timeout=20)
            assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
            # And a running one, held by whichever replica drives its backend.
            running = await on_second.CancelJob(pb.CancelJobRequest(job_id=blockers[0]), timeout=30)
            assert running.job.state == job_pb2.JOB_STATE_CANCELLED
            for job_id in blockers[1:]:
                await on_first.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)
    finally:
        for process in (first, second):
            process.signal(signal.SIGTERM)
        assert await first.wait() == 0
        assert await second.wait() == 0
    for job_id in jobs:
        assert sum(sim.submitted_prompt_ids.count(job_id) for sim in two_simulators) == 1
    assert all(waiting not in sim.submitted_prompt_ids for sim in two_simulators)


async def test_a_pending_callback_survives_the_replica_that_held_it(
    simulator: Simulator, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    receiver = CallbackReceiver()
    await receiver.start()
    receiver.answers = [503]  # the receiver is down for now
    url = postgres_server.url(postgres_server.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    secret = tmp_path / "callback-secret"
    secret.write_text("callback-secret\n")
    args = [
        "--callback-allow", "127.0.0.1/32", "--callback-allow-http",
        "--callback-secret-file", str(secret), "--callback-retry-initial", "0.2",
    ]  # fmt: skip
    log = tmp_path / "replicas.log"
    replicas = {
        name: replica([simulator.url], tmp_path, url_file, name, log, args)
        for name in ("replica-1", "replica-2")
    }
    try:
        for process in replicas.values():
            await process.start()
        await until_spread(url, backends=1, replicas=1)
        [holder] = (await owners(url)).values()
        other = next(name for name in replicas if name != holder)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas[other].port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            request = small_image()
            request.callback.url = receiver.url
            job_id = (await stub.Generate(request, timeout=10)).job_id
            # Sent (and failed) twice by the replica holding the job.
            failed, _ = await receiver.wait_for(2)
            replicas[holder].signal(signal.SIGKILL)
            await replicas[holder].wait()
            receiver.answers = [200]
            receiver.received.clear()
            # The other replica takes the delivery over, under the same delivery id.
            [delivered] = await receiver.wait_for(1, timeout=30)
            assert (
                delivered.headers["X-ComfyUI-GRPC-Delivery"]
                == failed.headers["X-ComfyUI-GRPC-Delivery"]
            )
            assert parse_callback(delivered.body).job_id == job_id
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                job = (await stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=10)).job
                if job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED:
                    break
                assert loop.time() < deadline, job
                await asyncio.sleep(0.1)
    finally:
        for process in replicas.values():
            await process.kill()
        await receiver.stop()


async def test_fair_share_and_caller_limits_hold_across_replicas(
    simulator: Simulator, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """One caller floods the line through one replica, another arrives through
    the other: its job goes next, and the flooder's limit counts both replicas."""
    url = postgres_server.url(postgres_server.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    tokens = tmp_path / "tokens"
    tokens.write_text("batch:token-a\ninteractive:token-b\n")
    extra = [
        "--auth-token-file", str(tokens), "--backend-prefetch", "0",
        "--max-queued-jobs-per-caller", "5",
    ]  # fmt: skip
    log = tmp_path / "replicas.log"
    first = replica([simulator.url], tmp_path, url_file, "replica-1", log, extra)
    second = replica([simulator.url], tmp_path, url_file, "replica-2", log, extra)
    await first.start()
    await second.start()
    local = grpc.local_channel_credentials()

    def as_caller(port: int, token: str) -> grpc.aio.Channel:
        credentials = grpc.composite_channel_credentials(
            local, grpc.access_token_call_credentials(token)
        )
        return grpc.aio.secure_channel(f"localhost:{port}", credentials)

    try:
        await until_spread(url, backends=1, replicas=1)
        async with (
            as_caller(first.port, "token-a") as batch_one,
            as_caller(second.port, "token-a") as batch_two,
            as_caller(second.port, "token-b") as interactive_two,
        ):
            batch = pb_grpc.GenerationServiceStub(batch_one)
            blocker = await batch.Generate(
                workflow_request(slow_workflow(200, 0.02, "block")), timeout=10
            )
            # The blocker runs; five more of the batch caller wait in the shared line.
            mine = [(await batch.Generate(small_image(f"a{n}"), timeout=10)).job_id
                    for n in range(5)]  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.GenerationServiceStub(batch_two).Generate(
                    small_image("a-too-many"), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            theirs = await pb_grpc.GenerationServiceStub(interactive_two).Generate(
                small_image("b0"), timeout=10
            )
            # The batch caller had its turn (the blocker): the other caller's job is next.
            assert theirs.queue_position == 1
            await batch.CancelJob(pb.CancelJobRequest(job_id=blocker.job_id), timeout=20)
            for job_id in [*mine, theirs.job_id]:
                result = await batch.GetResult(
                    pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 30}), timeout=40
                )
                assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        for process in (first, second):
            process.signal(signal.SIGTERM)
        assert await first.wait() == 0
        assert await second.wait() == 0
    assert simulator.submitted_prompt_ids[:3] == [blocker.job_id, theirs.job_id, mine[0]]


async def test_previews_reach_streams_on_every_replica(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Only the holder's socket hears a job's previews; a stream asking for
    them on the other replica gets them relayed through the database."""
    sims = [
        Simulator(output_dir=tmp_path / f"comfyui-{i}", step_seconds=0.01, preview_method="auto")
        for i in range(2)
    ]
    for sim in sims:
        await sim.start(host="127.0.0.1", port=0)
    url = postgres_server.url(postgres_server.create_database())
    url_file = tmp_path / "state-url"
    url_file.write_text(url + "\n")
    log = tmp_path / "replicas.log"
    urls = [sim.url for sim in sims]
    processes = [replica(urls, tmp_path, url_file, f"replica-{n}", log) for n in (1, 2)]
    for process in processes:
        await process.start()
    try:
        await until_spread(url, backends=2, replicas=2)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in processes]
        stubs = [pb_grpc.GenerationServiceStub(channel) for channel in channels]
        steps = 8
        job = await stubs[0].Generate(
            workflow_request(preview_workflow(steps=steps, prefix="relayed")), timeout=10
        )

        async def follow(stub: pb_grpc.GenerationServiceStub) -> list[pb.ProgressEvent]:
            request = pb.StreamProgressRequest(
                job_id=job.job_id, after_sequence=0, include_previews=True, preview_max_fps=10
            )
            return [e async for e in stub.StreamProgress(request, timeout=60)]

        streams = await asyncio.gather(*(follow(stub) for stub in stubs))
        for channel in channels:
            await channel.close()
        holder = await holder_of(url, job.job_id)
        assert holder in {"replica-1", "replica-2"}
        events = []
        for name, stream in zip(("replica-1", "replica-2"), streams, strict=True):
            assert event_kind(stream[-1]) == "succeeded"
            previews = [e.preview for e in stream if event_kind(e) == "preview"]
            # Steps 0.3 s apart: the relay (at most 0.1 s behind) carries most of them.
            steps_seen = {p.value for p in previews}
            assert len(steps_seen) >= steps // 2, (name, holder, steps_seen)
            for preview in previews:
                assert (preview.node_id, preview.class_type, preview.max) == (
                    "2",
                    "TestSlowProgress",
                    steps,
                )
                assert preview.content_type == "image/jpeg"
                assert preview.image.startswith(b"\xff\xd8")
            events.append(
                [(e.sequence, event_kind(e)) for e in stream[1:] if event_kind(e) != "preview"]
            )
        assert events[0] == events[1]
    finally:
        for process in processes:
            process.signal(signal.SIGTERM)
        codes = [await process.wait() for process in processes]
        for sim in sims:
            await sim.stop()
    assert codes == [0, 0]
    # Both share one local artifact directory here; replicas on several hosts would not.
    assert log.read_text().count("other replicas can serve them only if they share it") == 2

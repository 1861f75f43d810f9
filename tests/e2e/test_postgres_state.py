"""The gateway process with its job records in PostgreSQL: killed mid-job and
restarted, it finishes the job once and still knows its ``request_id``; the
database password reaches the server but no log line; a database that cannot
be reached stops the start with one line."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from support.gateway_process import GatewayProcess
from support.net import free_port
from support.postgres import PASSWORD, PostgresServer

from .helpers import slow_workflow, small_image, until_event, workflow_request


async def test_a_killed_gateway_resumes_from_postgresql(
    simulator: Simulator, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    database = postgres_server.create_database()
    url_file = tmp_path / "state-url"
    url_file.write_text(postgres_server.url(database) + "\n")
    # First the URL from a file, password included; then from the variable,
    # the password from libpq's PGPASSWORD.
    # The same --replica-id across the restart: the new process takes the
    # backend's lease back at once instead of waiting for it to lapse.
    same_replica = ["--replica-id", "pg-gateway"]
    first = GatewayProcess(
        simulator.url,
        tmp_path,
        state=False,
        extra_args=["--state-url-file", str(url_file), *same_replica],
    )
    request = workflow_request(slow_workflow(40, 0.03), request_id="pg-once")
    await first.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            # One job finished before the crash (found only in the store), one running.
            done = await stub.Generate(small_image(request_id="pg-done"), timeout=10)
            finished = await stub.GetResult(
                pb.GetResultRequest(job_id=done.job_id, wait_timeout={"seconds": 30}), timeout=40
            )
            assert finished.job.state == job_pb2.JOB_STATE_SUCCEEDED, finished.job.error
            job_id = (await stub.Generate(request, timeout=10)).job_id
            await until_event(stub, job_id, "node_progress")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.kill()

    second = GatewayProcess(
        simulator.url,
        tmp_path,
        state=False,
        extra_args=same_replica,
        env={
            "COMFYUI_GRPC_STATE_URL": postgres_server.url(database, password=False),
            "PGPASSWORD": PASSWORD,
        },
    )
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            again = await stub.Generate(request, timeout=10)
            assert again.job_id == job_id
            assert again.deduplicated
            for each in (job_id, done.job_id):
                result = await stub.GetResult(
                    pb.GetResultRequest(job_id=each, wait_timeout={"seconds": 60}), timeout=70
                )
                assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
            repeated = await stub.Generate(small_image(request_id="pg-done"), timeout=10)
            assert repeated.job_id == done.job_id
            assert repeated.deduplicated
    finally:
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
    assert simulator.submitted_prompt_ids.count(job_id) == 1
    assert simulator.submitted_prompt_ids.count(done.job_id) == 1
    logs = "".join(first.lines + second.lines)
    assert PASSWORD not in logs
    assert f"state_url = postgresql://127.0.0.1:{postgres_server.port}/{database}" in logs


async def test_an_unreachable_database_stops_the_start_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_grpc",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        "--state-url",
        f"postgresql://gateway:s3cret-pw@127.0.0.1:{port}/jobs",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    text = stderr.decode()
    assert "s3cret-pw" not in text
    assert "Traceback" not in text
    (last,) = [line for line in text.splitlines() if "error:" in line]
    assert last.startswith(
        f"comfyui-grpc serve: error: the job store (postgresql://127.0.0.1:{port}/jobs) "
        "cannot be used: connection failed"
    )

"""The gateway as its own process: killed with SIGKILL and restarted, and
drained with SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2

from .helpers import collect, event_kind, slow_workflow, workflow_request

LISTENING = re.compile(r"gRPC server listening on \S+ \(port (\d+)")


class GatewayProcess:
    """``python -m comfyui_grpc serve`` with its log captured."""

    def __init__(self, comfyui_url: str, root: Path) -> None:
        self.argv = [
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
            "--comfyui-url",
            comfyui_url,
            "--state-path",
            str(root / "state.db"),
            "--artifact-dir",
            str(root / "artifacts"),
            "--reconcile-interval",
            "0.5",
            "--shutdown-grace",
            "20",
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.port = 0
        self._reader: asyncio.Task[None] | None = None
        self._seen = asyncio.Condition()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())
        match = await self.wait_for(LISTENING)
        self.port = int(match.group(1))

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            async with self._seen:
                self.lines.append(raw.decode(errors="replace"))
                self._seen.notify_all()

    async def wait_for(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        async def find() -> re.Match[str]:
            async with self._seen:
                while True:
                    for line in self.lines:
                        if found := pattern.search(line):
                            return found
                    if self._reader is not None and self._reader.done():
                        raise AssertionError("gateway exited:\n" + "".join(self.lines))
                    await self._seen.wait()

        return await asyncio.wait_for(find(), timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()


async def _wait_running(stub: pb_grpc.GenerationServiceStub, job_id: str) -> int:
    """Follow the job until a sampler step was reported; return that event's sequence."""
    stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id, after_sequence=0))
    async for event in stream:
        if event_kind(event) == "node_progress":
            stream.cancel()
            return event.sequence
    raise AssertionError("the job ended before it reported progress")


async def test_sigkill_mid_job_then_restart_finishes_the_job_once(
    simulator: Simulator, tmp_path: Path
) -> None:
    first = GatewayProcess(simulator.url, tmp_path)
    await first.start()
    request = workflow_request(slow_workflow(60, 0.03), request_id="restart-1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job_id = (await stub.Generate(request, timeout=10)).job_id
            seen = await _wait_running(stub, job_id)
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.kill()

    second = GatewayProcess(simulator.url, tmp_path)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            again = await stub.Generate(request, timeout=10)
            assert again.job_id == job_id
            assert again.deduplicated
            result = await stub.GetResult(
                pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 60}), timeout=70
            )
            assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
            assert len(result.job.artifacts) == 1
            resumed = await collect(stub, job_id, after=seen)
            sequences = [e.sequence for e in resumed[1:]]
            assert sequences == sorted(set(sequences))
            assert all(s > seen for s in sequences)
            assert event_kind(resumed[-1]) == "succeeded"
    finally:
        second.signal(signal.SIGTERM)
        await second.wait()
    assert simulator.submitted_prompt_ids.count(job_id) == 1
    stored = sorted(p.name for p in (tmp_path / "artifacts" / job_id).rglob("*") if p.is_file())
    assert stored == sorted([result.job.artifacts[0].filename, "manifest.json"])


async def test_sigterm_drains_open_streams_then_exits_zero(
    simulator: Simulator, tmp_path: Path
) -> None:
    gateway = GatewayProcess(simulator.url, tmp_path)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            job_id = (
                await stub.Generate(workflow_request(slow_workflow(40, 0.03)), timeout=10)
            ).job_id
            await _wait_running(stub, job_id)
            stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id))
            first = await stream.read()
            assert event_kind(first) == "snapshot"
            gateway.signal(signal.SIGTERM)
            await gateway.wait_for(re.compile("shutting down"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListJobs(pb.ListJobsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            rest = []
            while (event := await stream.read()) is not grpc.aio.EOF:
                rest.append(event)
            assert event_kind(rest[-1]) == "succeeded"
        assert await gateway.wait() == 0
    finally:
        await gateway.kill()

"""A CANCELLED answer is retried like UNAVAILABLE.

A gateway replica that stops (a rolling update) cancels the calls it had
received but not begun, so a caller sees CANCELLED for a call nobody
cancelled. A scripted server answers the first call of each method with
CANCELLED; the SDK must retry Generate (same ``request_id``) and GetResult,
and resume a stream, without the caller seeing an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from comfyui_grpc_client import AsyncClient, CallCancelledError, JobState, RetryPolicy
from comfyui_grpc_client.progress import EventKind


def _job(state: Any) -> job_pb2.Job:
    return job_pb2.Job(job_id="job-1", state=state)


class CancelsFirstCall(pb_grpc.GenerationServiceServicer):
    """Answers each method's first call CANCELLED, as a stopping server does."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.request_ids: list[str] = []

    async def _first_cancelled(self, method: str, context: Any) -> None:
        self.calls[method] += 1
        if self.calls[method] == 1:
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        self.request_ids.append(request.request_id)
        await self._first_cancelled("Generate", context)
        return pb.GenerateResponse(job_id="job-1", state=job_pb2.JOB_STATE_QUEUED)

    async def GetResult(self, request: pb.GetResultRequest, context: Any) -> pb.GetResultResponse:
        await self._first_cancelled("GetResult", context)
        return pb.GetResultResponse(job=_job(job_pb2.JOB_STATE_SUCCEEDED))

    async def StreamProgress(
        self, request: pb.StreamProgressRequest, context: Any
    ) -> AsyncIterator[pb.ProgressEvent]:
        self.calls["StreamProgress"] += 1
        yield pb.ProgressEvent(
            job_id="job-1",
            sequence=request.after_sequence,
            state=job_pb2.JOB_STATE_RUNNING,
            snapshot=pb.JobSnapshot(job=_job(job_pb2.JOB_STATE_RUNNING)),
        )
        if self.calls["StreamProgress"] == 1:
            yield pb.ProgressEvent(
                job_id="job-1", sequence=1, state=job_pb2.JOB_STATE_RUNNING, started=pb.JobStarted()
            )
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        yield pb.ProgressEvent(
            job_id="job-1",
            sequence=2,
            state=job_pb2.JOB_STATE_SUCCEEDED,
            succeeded=pb.JobSucceeded(),
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[CancelsFirstCall, str]]:
    servicer = CancelsFirstCall()
    grpc_server = grpc.aio.server()
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await grpc_server.stop(0)


async def test_cancelled_calls_are_retried(server: tuple[CancelsFirstCall, str]) -> None:
    servicer, target = server
    async with AsyncClient(target, retry=RetryPolicy(initial_backoff=0.01)) as client:
        submission = await client.submit(pb.GenerateRequest(), request_id="same-id")
        assert submission.job_id == "job-1"
        assert submission.attempts == 2
        assert servicer.request_ids == ["same-id", "same-id"]

        updates = [u async for u in client.watch("job-1", after_sequence=0)]
        kinds = [u.kind for u in updates]
        assert kinds == [EventKind.SNAPSHOT, EventKind.STARTED, EventKind.SUCCEEDED]
        assert updates[-1].resumed

        job = await client.get_result("job-1")
        assert job.state is JobState.SUCCEEDED
    assert servicer.calls == Counter({"Generate": 2, "StreamProgress": 2, "GetResult": 2})


async def test_a_policy_without_cancelled_reports_it(server: tuple[CancelsFirstCall, str]) -> None:
    _, target = server
    policy = RetryPolicy(retry_codes=frozenset({grpc.StatusCode.UNAVAILABLE}))
    async with AsyncClient(target, retry=policy) as client:
        with pytest.raises(CallCancelledError):
            await client.get_result("job-1")

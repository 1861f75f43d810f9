"""SDK logic that needs no network: folding events, error lines, backoff."""

from __future__ import annotations

import grpc
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import job_pb2
from comfyui_grpc_client import (
    EventKind,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryPolicy,
    from_rpc_error,
)
from comfyui_grpc_client.progress import ProgressFollower
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


def snapshot(sequence: int, fraction: float) -> pb.ProgressEvent:
    job = job_pb2.Job(
        job_id="j", state=job_pb2.JOB_STATE_RUNNING, progress=job_pb2.JobProgress(fraction=fraction)
    )
    return pb.ProgressEvent(
        job_id="j",
        sequence=sequence,
        state=job_pb2.JOB_STATE_RUNNING,
        snapshot=pb.JobSnapshot(job=job),
    )


def step(sequence: int, value: int, fraction: float) -> pb.ProgressEvent:
    return pb.ProgressEvent(
        job_id="j",
        sequence=sequence,
        state=job_pb2.JOB_STATE_RUNNING,
        node_progress=pb.NodeProgress(
            node_id="5", class_type="KSampler", value=value, max=10, job_fraction=fraction
        ),
    )


def test_follower_replays_from_the_start_and_drops_repeats_after_a_resume() -> None:
    follower = ProgressFollower("j", after_sequence=0)
    first = follower.accept(snapshot(3, 0.5))
    assert first is not None
    assert first.kind is EventKind.SNAPSHOT
    assert first.fraction == 0.0  # the replay that follows builds the picture
    assert first.job is not None
    assert first.job.progress.fraction == 0.5
    assert follower.resume_after == 0
    seen = [follower.accept(step(n, n, n / 10)) for n in (1, 2, 3)]
    assert [u.sequence for u in seen if u] == [1, 2, 3]
    assert follower.resume_after == 3

    follower.mark_resumed()
    assert follower.accept(snapshot(5, 0.6)) is None  # a resumed stream's snapshot
    assert follower.accept(step(3, 3, 0.3)) is None  # already delivered
    resumed = follower.accept(step(4, 4, 0.4))
    assert resumed is not None
    assert resumed.resumed
    assert resumed.fraction == 0.4
    assert resumed.percent == 40
    later = follower.accept(step(5, 5, 0.35))  # fraction never runs backwards
    assert later is not None
    assert not later.resumed
    assert later.fraction == 0.4


def test_follower_without_replay_takes_the_snapshot_as_its_picture() -> None:
    follower = ProgressFollower("j")
    update = follower.accept(snapshot(7, 0.25))
    assert update is not None
    assert update.fraction == 0.25
    assert follower.resume_after == 7


class FakeCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, status: status_pb2.Status) -> None:
        self._code, self._details, self._status = code, details, status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def packed(message: object) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)  # type: ignore[arg-type]
    return value


def test_error_details_become_attributes_and_one_clear_line() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="video.frames", description="between 8 and 32"
    )
    status = status_pb2.Status(
        code=3,
        message="bad video",
        details=[
            packed(error_details_pb2.ErrorInfo(reason="BAD_VIDEO", domain="comfyui-grpc")),
            packed(error_details_pb2.BadRequest(field_violations=[violation])),
        ],
    )
    error = from_rpc_error(FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "bad video", status))
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "BAD_VIDEO"
    assert [str(v) for v in error.violations] == ["video.frames: between 8 and 32"]
    assert error.one_line() == (
        "INVALID_ARGUMENT (BAD_VIDEO): bad video [video.frames: between 8 and 32]"
    )

    full = status_pb2.Status(
        code=8,
        message="queue full",
        details=[packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7)))],
    )
    busy = from_rpc_error(FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", full))
    assert isinstance(busy, ResourceExhaustedError)
    assert busy.retry_delay == 7.0
    assert RetryPolicy(retry_codes=frozenset({busy.code})).backoff(1, busy) >= 7.0
    assert "retry in 7 s" in busy.one_line()

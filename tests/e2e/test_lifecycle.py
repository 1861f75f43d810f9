"""The job lifecycle end to end: gRPC client -> gateway -> simulator -> store."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import httpx
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.jobs import tracker as tracker_module
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2

from .helpers import (
    collect,
    event_kind,
    field_violations,
    slow_workflow,
    small_image,
    workflow_request,
)

pytestmark = pytest.mark.asyncio


def _stored_file(gateway: Gateway, key: str) -> Path:
    root = gateway.settings.storage.local_dir
    return root / key


async def _until_running(stub: pb_grpc.GenerationServiceStub, job_id: str) -> None:
    """Returns once the job reports its first sampler step."""
    stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id, after_sequence=0))
    async for event in stream:
        if event_kind(event) == "node_progress":
            break
    stream.cancel()


async def test_text_to_image_succeeds_with_a_stored_png(
    stub: pb_grpc.GenerationServiceStub, gateway: Gateway
) -> None:
    response = await stub.Generate(small_image(), timeout=10)
    assert response.job_id
    assert response.state == job_pb2.JOB_STATE_QUEUED
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    job = result.job
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(job.artifacts) == 1
    artifact = job.artifacts[0]
    assert artifact.content_type == "image/png"
    assert artifact.key == f"{response.job_id}/7/{artifact.filename}"
    data = _stored_file(gateway, artifact.key).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert artifact.size_bytes == len(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert job.progress.fraction == 1.0
    assert job.end_time.seconds >= job.start_time.seconds >= job.create_time.seconds > 0


async def test_video_succeeds_with_a_stored_mp4(
    stub: pb_grpc.GenerationServiceStub, gateway: Gateway
) -> None:
    request = pb.GenerateRequest(
        video=pb.Video(prompt="a paper boat", frames=8, fps=8, width=64, height=64, steps=2, seed=3)
    )
    response = await stub.Generate(request, timeout=10)
    events = await collect(stub, response.job_id)
    assert event_kind(events[-1]) == "succeeded", events[-1]
    (artifact,) = events[-1].succeeded.artifacts
    assert artifact.content_type == "video/mp4"
    assert artifact.animated
    assert artifact.filename.endswith(".mp4")
    data = _stored_file(gateway, artifact.key).read_bytes()
    assert data[4:8] == b"ftyp"
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()


async def test_progress_events_are_ordered_and_monotonic(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    response = await stub.Generate(small_image(steps=6), timeout=10)
    events = await collect(stub, response.job_id, after=0)
    assert event_kind(events[0]) == "snapshot"
    body = events[1:]
    sequences = [e.sequence for e in body]
    assert sequences == list(range(1, len(body) + 1))
    kinds = [event_kind(e) for e in body]
    assert kinds[0] in ("queued", "started")
    assert "started" in kinds
    assert kinds.count("node_progress") >= 6
    assert kinds[-3:] == ["uploading", "artifact_stored", "succeeded"]
    fractions = [e.node_progress.job_fraction for e in body if event_kind(e) == "node_progress"]
    assert fractions == sorted(fractions)
    assert all(0.0 <= f <= 1.0 for f in fractions)
    sampler = [e.node_progress for e in body if event_kind(e) == "node_progress"]
    assert [p.value for p in sampler] == list(range(1, 7))
    assert all(p.max == 6 and p.class_type == "KSampler" for p in sampler)
    assert all(e.job_id == response.job_id for e in events)


async def test_resumed_stream_gets_exactly_the_missed_events(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    response = await stub.Generate(small_image(steps=4), timeout=10)
    full = await collect(stub, response.job_id, after=0)
    last = full[-1].sequence
    middle = last // 2
    resumed = await collect(stub, response.job_id, after=middle)
    assert event_kind(resumed[0]) == "snapshot"
    assert resumed[0].sequence == last
    assert [e.sequence for e in resumed[1:]] == list(range(middle + 1, last + 1))
    assert [e.SerializeToString() for e in resumed[1:]] == [
        e.SerializeToString() for e in full[middle + 1 :]
    ]
    # Without after_sequence a finished job's stream is the snapshot alone.
    only_snapshot = await collect(stub, response.job_id)
    assert [event_kind(e) for e in only_snapshot] == ["snapshot"]
    assert only_snapshot[0].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_a_stream_opened_mid_job_resumes_live(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator
) -> None:
    response = await stub.Generate(
        workflow_request(slow_workflow(steps=20, seconds_per_step=0.05)), timeout=10
    )
    first = stub.StreamProgress(pb.StreamProgressRequest(job_id=response.job_id, after_sequence=0))
    seen: list[pb.ProgressEvent] = []
    async for event in first:
        seen.append(event)
        if event_kind(event) == "node_progress" and event.node_progress.value >= 3:
            break
    first.cancel()
    rest = await collect(stub, response.job_id, after=seen[-1].sequence)
    sequences = [e.sequence for e in seen[1:]] + [e.sequence for e in rest[1:]]
    assert sequences == list(range(1, sequences[-1] + 1))
    assert event_kind(rest[-1]) == "succeeded"


async def test_hundred_subscribers_all_get_the_full_sequence(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    response = await stub.Generate(
        workflow_request(slow_workflow(steps=10, seconds_per_step=0.02)), timeout=10
    )
    streams = await asyncio.gather(*(collect(stub, response.job_id, after=0) for _ in range(100)))
    reference = [e.sequence for e in streams[0][1:]]
    assert reference == list(range(1, len(reference) + 1))
    assert event_kind(streams[0][-1]) == "succeeded"
    for events in streams:
        assert [e.sequence for e in events[1:]] == reference


async def test_cancel_running_and_queued_jobs_leaves_others_alone(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator
) -> None:
    running = await stub.Generate(
        workflow_request(slow_workflow(steps=200, seconds_per_step=0.05, prefix="a")), timeout=10
    )
    queued = await stub.Generate(
        workflow_request(slow_workflow(steps=2, seconds_per_step=0.01, prefix="b")), timeout=10
    )
    survivor = await stub.Generate(
        workflow_request(slow_workflow(steps=2, seconds_per_step=0.01, prefix="c")), timeout=10
    )
    await _until_running(stub, running.job_id)

    cancelled_queued = await stub.CancelJob(pb.CancelJobRequest(job_id=queued.job_id), timeout=15)
    assert cancelled_queued.job.state == job_pb2.JOB_STATE_CANCELLED
    cancelled_running = await stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id), timeout=15)
    assert cancelled_running.job.state == job_pb2.JOB_STATE_CANCELLED

    ended = await collect(stub, running.job_id, after=0)
    assert event_kind(ended[-1]) == "cancelled"
    assert ended[-1].cancelled.was_running
    queued_events = await collect(stub, queued.job_id, after=0)
    assert event_kind(queued_events[-1]) == "cancelled"
    assert not queued_events[-1].cancelled.was_running

    result = await stub.GetResult(
        pb.GetResultRequest(job_id=survivor.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED
    # Cancelling again changes nothing.
    again = await stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id), timeout=5)
    assert again.job.state == job_pb2.JOB_STATE_CANCELLED
    done = await stub.CancelJob(pb.CancelJobRequest(job_id=survivor.job_id), timeout=5)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_duplicate_request_id_submits_once(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator
) -> None:
    request = small_image(request_id="order-42")
    responses = await asyncio.gather(*(stub.Generate(request, timeout=10) for _ in range(5)))
    assert len({r.job_id for r in responses}) == 1
    assert sum(not r.deduplicated for r in responses) == 1
    later = await stub.Generate(request, timeout=10)
    assert later.job_id == responses[0].job_id
    assert later.deduplicated
    assert simulator.submitted_prompt_ids.count(responses[0].job_id) == 1
    assert len(simulator.submitted_prompt_ids) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(small_image("another prompt", request_id="order-42"), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_websocket_drop_mid_job_still_succeeds(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator
) -> None:
    simulator.faults.ws_drop_after_messages = 6
    response = await stub.Generate(
        workflow_request(slow_workflow(steps=10, seconds_per_step=0.02)), timeout=10
    )
    result = await stub.GetResult(
        pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
    assert len(result.job.artifacts) == 1


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.GenerateRequest(), ["input"]),
        (small_image(width=100), ["text_to_image.width"]),
        (small_image(prompt=""), ["text_to_image.prompt"]),
        (small_image(checkpoint="missing.safetensors"), ["text_to_image.checkpoint"]),
        (
            workflow_request({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}),
            ["workflow.1.inputs.images"],
        ),
        (
            workflow_request(
                {
                    "1": {
                        "class_type": "EmptyImage",
                        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
                    },
                    "2": {
                        "class_type": "TestSlowProgress",
                        "inputs": {"image": ["1", 0], "seconds_per_step": 0.0},
                    },
                    "3": {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["2", 0], "filename_prefix": "x"},
                    },
                }
            ),
            ["workflow.2.inputs.steps"],
        ),
        (workflow_request({"1": {"class_type": "NoSuchNode", "inputs": {}}}), ["workflow.1"]),
        (pb.GenerateRequest(workflow_json="{not json"), ["workflow_json"]),
    ],
)
async def test_bad_requests_are_invalid_argument_with_field_violations(
    stub: pb_grpc.GenerationServiceStub,
    simulator: Simulator,
    request_: pb.GenerateRequest,
    fields: list[str],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value) == fields
    listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=5)
    assert list(listed.jobs) == []


async def test_partially_valid_workflow_is_withdrawn(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator
) -> None:
    """ComfyUI answers 200 with node_errors and runs the valid output: refuse it."""
    graph = slow_workflow(steps=50, seconds_per_step=0.05)
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": 5}}
    graph["5"] = {
        "class_type": "TestSlowProgress",
        "inputs": {"image": ["1", 0], "steps": -1, "seconds_per_step": 0.0},
    }
    graph["6"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["5", 0], "filename_prefix": "bad"},
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(workflow_request(graph), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow.5.inputs.steps" in field_violations(info.value)
    queue = await simulator_queue(simulator)
    assert queue == {"queue_running": [], "queue_pending": []} or not any(
        item[1] in simulator.submitted_prompt_ids for item in queue["queue_pending"]
    )


async def simulator_queue(simulator: Simulator) -> dict[str, list[list[object]]]:
    import httpx

    async with httpx.AsyncClient(base_url=simulator.url) as client:
        response = await client.get("/queue")
        return response.json()  # type: ignore[no-any-return]


async def test_unknown_and_malformed_job_ids(stub: pb_grpc.GenerationServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetResult(
            pb.GetResultRequest(job_id="00000000-0000-4000-8000-00000000dead"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelJob(pb.CancelJobRequest(job_id="../../etc"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_jobs_pages_running_then_queued_then_finished(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    done = await stub.Generate(small_image(steps=1), timeout=10)
    await stub.GetResult(
        pb.GetResultRequest(job_id=done.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    slow = await stub.Generate(workflow_request(slow_workflow(100, 0.05, "l1")), timeout=10)
    waiting = [
        await stub.Generate(workflow_request(slow_workflow(1, 0.0, f"w{i}")), timeout=10)
        for i in range(3)
    ]
    stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=slow.job_id, after_sequence=0))
    async for event in stream:
        if event_kind(event) == "started":
            break
    stream.cancel()
    first = await stub.ListJobs(pb.ListJobsRequest(page_size=2), timeout=5)
    second = await stub.ListJobs(
        pb.ListJobsRequest(page_size=3, page_token=first.next_page_token), timeout=5
    )
    assert first.next_page_token
    assert not second.next_page_token
    ids = [j.job_id for j in first.jobs] + [j.job_id for j in second.jobs]
    assert ids == [slow.job_id, *(w.job_id for w in waiting), done.job_id]
    # w0 is already in ComfyUI's queue (prefetched, first among ours there);
    # w1 and w2 wait in the gateway's line.
    positions = [j.queue_position for j in [*first.jobs, *second.jobs]]
    assert positions == [0, 1, 1, 2, 0]
    assert [bool(j.backend) for j in [*first.jobs, *second.jobs]][1:4] == [True, False, False]
    only_queued = await stub.ListJobs(
        pb.ListJobsRequest(states=[job_pb2.JOB_STATE_QUEUED]), timeout=5
    )
    assert [j.job_id for j in only_queued.jobs] == [w.job_id for w in waiting]
    await stub.CancelJob(pb.CancelJobRequest(job_id=slow.job_id), timeout=15)


async def test_result_of_an_evicted_job_comes_from_its_manifest(
    simulator: Simulator, tmp_path: Path
) -> None:
    from testkit import gateway_settings

    gw = Gateway(gateway_settings(tmp_path, simulator.url, max_finished_jobs=1))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            jobs = []
            for seed in (1, 2):
                response = await stub.Generate(
                    small_image(seed=seed, labels={"run": str(seed)}), timeout=10
                )
                done = await stub.GetResult(
                    pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 30}),
                    timeout=40,
                )
                jobs.append(done.job)
            assert gw.service.registry.get(jobs[0].job_id) is None, "not evicted"
            again = await stub.GetResult(pb.GetResultRequest(job_id=jobs[0].job_id), timeout=10)
            assert again.job.state == job_pb2.JOB_STATE_SUCCEEDED
            assert dict(again.job.labels) == {"run": "1"}
            assert list(again.job.artifacts) == list(jobs[0].artifacts)
            assert again.job.end_time.seconds == jobs[0].end_time.seconds
            streamed = await collect(stub, jobs[0].job_id, after=0)
            assert [event_kind(e) for e in streamed] == ["snapshot"]
            chunks = [
                part
                async for part in stub.ReadArtifact(
                    pb.ReadArtifactRequest(job_id=jobs[0].job_id, artifact=jobs[0].artifacts[0].key)
                )
            ]
            data = b"".join(c.chunk for c in chunks[1:])
            assert hashlib.sha256(data).hexdigest() == jobs[0].artifacts[0].sha256
    finally:
        await gw.stop(grace=0)


async def test_a_prompt_deleted_behind_the_gateways_back_is_resubmitted(
    stub: pb_grpc.GenerationServiceStub, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic full check: only the cheap queue probe can notice the deletion.
    monkeypatch.setattr(tracker_module, "FULL_RECONCILE_EVERY", 10**9)
    blocker = await stub.Generate(
        workflow_request(slow_workflow(steps=40, seconds_per_step=0.05, prefix="a")), timeout=10
    )
    victim = await stub.Generate(
        workflow_request(slow_workflow(steps=2, seconds_per_step=0.01, prefix="b")), timeout=10
    )
    await _until_running(stub, blocker.job_id)
    # Another ComfyUI client removes the waiting prompt; ComfyUI tells nobody.
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{simulator.url}/queue", json={"delete": [victim.job_id]})
        assert answer.status_code == 200

    result = await stub.GetResult(
        pb.GetResultRequest(job_id=victim.job_id, wait_timeout={"seconds": 30}), timeout=40
    )
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
    assert len(result.job.artifacts) == 1

"""The async SDK against the real gateway (and simulator) on real ports."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from client_testkit import CuttingProxy, read_bytes, running, slow_workflow
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc_client import (
    Artifact,
    AsyncClient,
    ChecksumMismatchError,
    DeadlineExceededError,
    EventKind,
    FailedPreconditionError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    JobState,
    NotFoundError,
    ProgressUpdate,
    RetryPolicy,
    UnavailableError,
    image_request,
    workflow_request,
)

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.2)


@pytest.fixture
async def proxy(gateway: Gateway) -> AsyncIterator[CuttingProxy]:
    async with running(CuttingProxy(gateway.port)) as cutting:
        yield cutting


def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


def assert_ordered(updates: list[ProgressUpdate]) -> None:
    """A snapshot, then every event exactly once with sequences 1, 2, 3, ..."""
    assert updates[0].kind is EventKind.SNAPSHOT
    sequences = [u.sequence for u in updates[1:]]
    assert sequences == list(range(1, len(sequences) + 1)), sequences
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions)
    assert updates[-1].terminal
    assert all(not u.terminal for u in updates[:-1])


async def test_generate_image_reports_progress_in_order_and_downloads(
    gateway: Gateway, tmp_path: Path
) -> None:
    updates: list[ProgressUpdate] = []
    async with AsyncClient(target(gateway)) as client:
        result = await client.generate_image(
            "a lighthouse", width=64, height=64, steps=4, seed=7, on_progress=updates.append
        )
        assert result.state is JobState.SUCCEEDED
        assert_ordered(updates)
        kinds = [u.kind for u in updates]
        assert kinds[-1] is EventKind.SUCCEEDED
        assert kinds.index(EventKind.STARTED) < kinds.index(EventKind.NODE_PROGRESS)
        assert updates[-1].fraction == 1.0
        assert any(u.class_type == "KSampler" and u.max == 4 for u in updates)

        (artifact,) = result.artifacts
        assert artifact.job_id == result.job_id
        assert artifact.content_type == "image/png"
        assert updates[-1].artifacts == result.artifacts
        out = tmp_path / "downloads"
        out.mkdir()
        path = await result.download(artifact, out / "out.png")
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG")
        stored = (gateway.settings.storage.local_dir / artifact.key).read_bytes()
        assert data == stored
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
        assert [p.name for p in out.iterdir()] == ["out.png"]  # no partial files left


async def test_async_iterator_handle_and_video(gateway: Gateway, tmp_path: Path) -> None:
    async with AsyncClient(target(gateway)) as client:
        handle = await client.start(workflow_request(slow_workflow(5, 0.01)))
        updates = [u async for u in handle.updates()]
        assert_ordered(updates)
        assert [u.value for u in updates if u.kind is EventKind.NODE_PROGRESS] == [1, 2, 3, 4, 5]
        result = await handle.result()
        assert result.job_id == handle.job_id
        assert [p.name for p in await result.download_all(tmp_path)] == [
            f"{result.job_id[:8]}-{a.filename}" for a in result.artifacts
        ]

        video = await client.generate_video(
            "a paper boat", frames=8, fps=8, width=64, height=64, steps=2, seed=3
        )
        (clip,) = video.artifacts
        assert clip.animated
        assert clip.content_type == "video/mp4"


async def test_stream_resumes_after_the_connection_is_cut(proxy: CuttingProxy) -> None:
    """The proxy aborts the TCP connection mid-stream; the SDK re-opens the
    stream with after_sequence and the callback still sees each event once."""
    async with AsyncClient(proxy.target, retry=FAST_RETRY) as client:
        opened: list[pb.StreamProgressRequest] = []
        open_stream = client.stub.StreamProgress

        def recording(request: pb.StreamProgressRequest, **kwargs: Any) -> Any:
            opened.append(request)
            return open_stream(request, **kwargs)

        client.stub.StreamProgress = recording  # type: ignore[assignment]
        updates: list[ProgressUpdate] = []

        def on_progress(update: ProgressUpdate) -> None:
            updates.append(update)
            if update.kind is EventKind.NODE_PROGRESS and update.value == 3:
                proxy.cut()

        result = await client.generate_workflow(slow_workflow(12, 0.02), on_progress=on_progress)
    assert proxy.cuts == 1
    assert proxy.connections >= 2
    assert_ordered(updates)
    resumed = [u for u in updates if u.resumed]
    assert len(resumed) == 1
    cut_at = next(
        i for i, u in enumerate(updates) if u.kind is EventKind.NODE_PROGRESS and u.value == 3
    )
    assert updates[cut_at + 1].resumed
    # Every re-opened stream asked for exactly the events after the last one seen.
    assert len(opened) >= 2
    assert opened[0].after_sequence == 0
    for request in opened[1:]:
        assert request.HasField("after_sequence")
        assert request.after_sequence == updates[cut_at].sequence
    steps = [u.value for u in updates if u.kind is EventKind.NODE_PROGRESS]
    assert steps == list(range(1, 13))
    assert result.state is JobState.SUCCEEDED


async def test_a_retried_generate_makes_one_job(proxy: CuttingProxy, simulator: Simulator) -> None:
    """The gateway submits the job but its answer is lost; the SDK retries with
    the same request_id and gets the first job back, not a second one."""
    async with AsyncClient(proxy.target, retry=FAST_RETRY) as client:
        proxy.cut_before_next_response()
        submission = await client.submit(workflow_request(slow_workflow(2, 0.01)))
        assert proxy.trap_fired.is_set()
        assert submission.attempts >= 2
        assert submission.deduplicated
        assert submission.request_id.startswith("sdk-")
        assert simulator.submitted_prompt_ids == [submission.job_id]
        page = await client.list_jobs()
        assert [j.job_id for j in page.jobs] == [submission.job_id]
        assert page.jobs[0].request_id == submission.request_id


async def test_without_retries_the_lost_answer_is_an_unavailable_error(
    proxy: CuttingProxy, simulator: Simulator
) -> None:
    async with AsyncClient(proxy.target, retry=RetryPolicy(max_attempts=1)) as client:
        proxy.cut_before_next_response()
        with pytest.raises(UnavailableError) as caught:
            await client.submit(workflow_request(slow_workflow(2, 0.01)), request_id="r-1")
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        # The caller retries by hand with the same request id: still one job.
        again = await client.submit(workflow_request(slow_workflow(2, 0.01)), request_id="r-1")
        assert again.deduplicated
        assert simulator.submitted_prompt_ids == [again.job_id]


async def test_cancel_a_running_job(gateway: Gateway, simulator: Simulator) -> None:
    async with AsyncClient(target(gateway)) as client:
        handle = await client.start(workflow_request(slow_workflow(400, 0.05)))
        seen: list[ProgressUpdate] = []
        async for update in handle.updates():
            seen.append(update)
            if update.kind is EventKind.NODE_PROGRESS:
                job = await handle.cancel()
                assert job.cancel_requested
                assert job.state in (JobState.CANCELLED, JobState.RUNNING)
        assert seen[-1].kind is EventKind.CANCELLED
        assert seen[-1].state is JobState.CANCELLED
        with pytest.raises(JobCancelledError) as caught:
            await handle.result(timeout=10)
        assert caught.value.job.state is JobState.CANCELLED
        assert caught.value.code is None
        # Cancel is idempotent: a finished job comes back unchanged.
        assert (await client.cancel(handle.job_id)).state is JobState.CANCELLED


async def test_errors_are_typed_with_code_reason_and_violations(
    gateway: Gateway, simulator: Simulator
) -> None:
    async with AsyncClient(target(gateway)) as client:
        with pytest.raises(InvalidArgumentError) as invalid:
            await client.generate_image("x", width=7)
        error = invalid.value
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.domain == "comfyui-grpc"
        assert error.reason
        assert "text_to_image.width" in [v.field for v in error.violations]
        assert "INVALID_ARGUMENT" in str(error)
        assert "text_to_image.width" in str(error)

        with pytest.raises(NotFoundError) as missing:
            await client.get_result("00000000-0000-4000-8000-000000000000")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND

        first = await client.submit(workflow_request(slow_workflow(2, 0.01)), request_id="same")
        with pytest.raises(FailedPreconditionError) as reused:
            await client.submit(workflow_request(slow_workflow(3, 0.01)), request_id="same")
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert first.job_id in reused.value.message

        simulator.faults.fail_node_class = "TestSlowProgress"
        with pytest.raises(JobFailedError) as failed:
            # Inputs unlike any earlier job's, so ComfyUI's cache cannot skip the node.
            await client.generate_workflow(slow_workflow(4, 0.01, prefix="doomed"))
        assert failed.value.code is None
        assert failed.value.error is not None
        assert failed.value.error.node_id == "2"
        assert failed.value.job.state is JobState.FAILED


async def test_deadlines(gateway: Gateway) -> None:
    async with AsyncClient(target(gateway)) as client:
        handle = await client.start(workflow_request(slow_workflow(400, 0.05)))
        with pytest.raises(DeadlineExceededError) as late:
            async for _ in client.watch(handle.job_id, timeout=0.3):
                pass
        assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExceededError):
            await client.wait(handle.job_id, timeout=0.3)
        await handle.cancel()


async def test_unreachable_gateway_is_unavailable_after_retries() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with AsyncClient(f"127.0.0.1:{port}", retry=policy, timeout=5) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.list_jobs()
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


async def test_download_refuses_bytes_that_do_not_match(gateway: Gateway, tmp_path: Path) -> None:
    async with AsyncClient(target(gateway)) as client:
        result = await client.generate_workflow(slow_workflow(1, 0.01))
        (artifact,) = result.artifacts
        stored = gateway.settings.storage.local_dir / artifact.key
        stored.write_bytes(stored.read_bytes()[:-1] + b"!")
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(ChecksumMismatchError):
            await client.download(artifact, out)
        assert list(out.iterdir()) == []


async def test_upload_input_and_list_jobs_paging(gateway: Gateway) -> None:
    async with AsyncClient(target(gateway)) as client:
        uploaded = await client.upload_input(b"\x89PNG\r\n\x1a\n" + b"0" * 100, filename="in.png")
        assert uploaded.size_bytes == 108
        assert uploaded.image.endswith(".png")
        ids = {(await client.submit(image_request("x", width=64, height=64, steps=1))).job_id}
        ids.add((await client.submit(image_request("y", width=64, height=64, steps=1))).job_id)
        seen = [job.job_id async for job in client.iter_jobs(page_size=1)]
        assert sorted(seen) == sorted(ids)


async def test_download_through_a_presigned_url(gateway: Gateway, tmp_path: Path) -> None:
    """The local store makes no presigned URLs, so the test serves one itself."""
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    served: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/bucket/key?X-Signature=abc"
    good = Artifact(
        job_id="j",
        key="j/9/picture.png",
        uri="s3://bucket/j/9/picture.png",
        filename="picture.png",
        content_type="image/png",
        size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        presigned_url=url,
    )
    out = tmp_path / "presigned"
    out.mkdir()
    async with server, AsyncClient(target(gateway)) as client:
        path = await client.download_url(good, out)
        assert read_bytes(path) == body
        assert served[0].startswith(b"GET /bucket/key?X-Signature=abc ")
        bad = dataclasses.replace(good, filename="bad.png", sha256="0" * 64)
        with pytest.raises(ChecksumMismatchError):
            await client.download_url(bad, out)
    assert sorted(p.name for p in out.iterdir()) == ["j-picture.png"]

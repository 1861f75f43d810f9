"""The fleet scheduler over real ports: late binding, routing by inventory,
fair share by caller, validation at Generate, cancel in the gateway's line."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.tasks import within
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from PIL import Image
from prometheus_client import generate_latest
from testkit import gateway_settings

from .helpers import (
    serving,
    slow_workflow,
    small_image,
    status_details,
    until_event,
    workflow_request,
)


@pytest.fixture
async def two_kinds(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Simulator]]:
    sd = Simulator(output_dir=tmp_path / "sd", step_seconds=0.0, checkpoints=["sd15.safetensors"])
    xl = Simulator(
        output_dir=tmp_path / "xl", step_seconds=0.0, checkpoints=["sd_xl_base_1.0.safetensors"]
    )
    await sd.start()
    await xl.start()
    try:
        yield sd, xl
    finally:
        await sd.stop()
        await xl.stop()


async def test_a_job_runs_only_where_its_checkpoint_is(
    two_kinds: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    sd, xl = two_kinds
    async with serving(tmp_path, sd.url, xl.url) as (_gw, stub):
        for checkpoint, simulator in (
            ("sd_xl_base_1.0.safetensors", xl),
            ("sd15.safetensors", sd),
        ):
            for _ in range(3):
                job = await stub.Generate(small_image(checkpoint=checkpoint), timeout=10)
                done = await stub.GetResult(
                    pb.GetResultRequest(job_id=job.job_id, wait_timeout={"seconds": 30}),
                    timeout=40,
                )
                assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
                assert done.job.backend == simulator.url
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(small_image(checkpoint="nowhere.safetensors"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, bad_request, _ = status_details(info.value)
        assert bad_request is not None
        fields = [v.field for v in bad_request.field_violations]
        assert fields == ["text_to_image.checkpoint"]
        assert "nowhere.safetensors" in bad_request.field_violations[0].description
    # Refused at Generate: neither ComfyUI was asked.
    assert len(sd.submitted_prompt_ids) == 3
    assert len(xl.submitted_prompt_ids) == 3


async def test_invalid_input_is_refused_at_generate_without_comfyui(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url) as (_gw, stub):
        graph = slow_workflow(3, 0.0)
        graph["2"]["inputs"]["steps"] = -1  # type: ignore[index]  # below min 0
        del graph["3"]["inputs"]["filename_prefix"]  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(workflow_request(graph), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, bad_request, _ = status_details(info.value)
        assert bad_request is not None
        fields = sorted(v.field for v in bad_request.field_violations)
        assert fields == ["workflow.2.inputs.steps", "workflow.3.inputs.filename_prefix"]
    assert simulator.submitted_prompt_ids == []


async def test_a_waiting_job_is_cancelled_without_reaching_comfyui(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(tmp_path, simulator.url, backend_prefetch=0) as (_gw, stub):
        running = await stub.Generate(workflow_request(slow_workflow(200, 0.02, "r")))
        await until_event(stub, running.job_id, "started")
        waiting = await stub.Generate(workflow_request(slow_workflow(1, 0.0, "w")))
        assert waiting.queue_position == 1
        cancelled = await stub.CancelJob(pb.CancelJobRequest(job_id=waiting.job_id))
        assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
        await stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id), timeout=15)
    assert simulator.submitted_prompt_ids == [running.job_id]


async def test_callers_take_turns_and_each_has_a_limit(
    simulator: Simulator, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("batch:token-a\ninteractive:token-b\n")
    gw = Gateway(
        gateway_settings(
            tmp_path,
            simulator.url,
            auth_token_file=str(tokens),
            backend_prefetch=0,
            max_queued_jobs_per_caller=5,
        )
    )
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        address = f"localhost:{gw.port}"
        local = grpc.local_channel_credentials()
        as_a = grpc.composite_channel_credentials(
            local, grpc.access_token_call_credentials("token-a")
        )
        as_b = grpc.composite_channel_credentials(
            local, grpc.access_token_call_credentials("token-b")
        )
        async with (
            grpc.aio.secure_channel(address, as_a) as channel_a,
            grpc.aio.secure_channel(address, as_b) as channel_b,
        ):
            stub = pb_grpc.GenerationServiceStub(channel_a)
            stub_b = pb_grpc.GenerationServiceStub(channel_b)
            blocker = await stub.Generate(workflow_request(slow_workflow(200, 0.02, "block")))
            await until_event(stub, blocker.job_id, "started")
            mine = [(await stub.Generate(small_image(f"a{n}"))).job_id for n in range(5)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Generate(small_image("a-too-many"))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info_detail, _, retry = status_details(info.value)
            assert info_detail is not None
            assert info_detail.reason == "CALLER_QUEUE_FULL"
            assert retry is not None
            theirs = await stub_b.Generate(small_image("b0"))
            scrape = generate_latest(gw.metrics.registry).decode()
            assert 'comfyui_grpc_caller_waiting_jobs{caller="batch"} 5.0' in scrape
            assert 'comfyui_grpc_caller_waiting_jobs{caller="interactive"} 1.0' in scrape
            # A already had its turn (the running job): B's one job goes next,
            # not behind A's five.
            assert theirs.queue_position == 1
            await stub.CancelJob(pb.CancelJobRequest(job_id=blocker.job_id), timeout=15)
            for job_id in [*mine, theirs.job_id]:
                await stub.GetResult(
                    pb.GetResultRequest(job_id=job_id, wait_timeout={"seconds": 30}), timeout=40
                )
    finally:
        await gw.stop(grace=0)
    scrape = generate_latest(gw.metrics.registry).decode()
    assert 'comfyui_grpc_caller_queue_wait_seconds_count{caller="interactive"} 1.0' in scrape
    assert 'comfyui_grpc_caller_queue_wait_seconds_count{caller="batch"} 6.0' in scrape
    order = simulator.submitted_prompt_ids
    assert order[:3] == [blocker.job_id, theirs.job_id, mine[0]]


async def test_an_image_uploaded_after_the_inventory_was_read_is_accepted(
    simulator: Simulator, tmp_path: Path
) -> None:
    """LoadImage's choices change with every upload: the gateway's copy of
    /object_info cannot judge them, ComfyUI does when the job reaches it."""
    gw = Gateway(gateway_settings(tmp_path, simulator.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        png = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(png, format="PNG")

        async def parts() -> AsyncIterator[pb.UploadInputRequest]:
            yield pb.UploadInputRequest(metadata=pb.UploadInputMetadata(filename="fresh.png"))
            yield pb.UploadInputRequest(chunk=png.getvalue())

        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            uploaded = await stub.UploadInput(parts(), timeout=10)
            graph = {
                "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.image}},
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": "loaded"},
                },
            }
            job = await stub.Generate(workflow_request(graph))
            done = await stub.GetResult(
                pb.GetResultRequest(job_id=job.job_id, wait_timeout={"seconds": 30}), timeout=40
            )
            assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
            # A file that is not there is still refused, by ComfyUI, as the job's failure.
            graph["1"]["inputs"]["image"] = "missing.png"
            job = await stub.Generate(workflow_request(graph))
            done = await stub.GetResult(
                pb.GetResultRequest(job_id=job.job_id, wait_timeout={"seconds": 30}), timeout=40
            )
            assert done.job.state == job_pb2.JOB_STATE_FAILED
            assert done.job.error.reason == "VALIDATION_FAILED"
            assert "1.inputs.image" in done.job.error.message
    finally:
        await gw.stop(grace=0)


async def test_generate_with_no_backend_up_names_it_and_says_when_to_retry(
    tmp_path: Path,
) -> None:
    gw = Gateway(gateway_settings(tmp_path, "http://127.0.0.1:1"))
    await gw.start()
    try:
        backend = next(iter(gw.pool))
        assert await within(backend.attempted.wait(), 15)  # its first try failed
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Generate(small_image(), timeout=10)
    finally:
        await gw.stop(grace=0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    details = info.value.details() or ""
    assert "http://127.0.0.1:1" in details
    assert "refused" in details
    error_info, _, retry = status_details(info.value)
    assert error_info is not None
    assert error_info.reason == "NO_BACKEND"
    assert retry is not None
    assert retry.retry_delay.seconds > 0


async def test_the_stopped_line_says_which_jobs_wait_in_the_gateway(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_grpc.app")
    async with serving(tmp_path, simulator.url, backend_prefetch=0) as (_gw, stub):
        running = await stub.Generate(workflow_request(slow_workflow(500, 0.02, "r")))
        await until_event(stub, running.job_id, "started")
        for n in range(2):
            await stub.Generate(workflow_request(slow_workflow(1, 0.0, f"w{n}")))
    stopped = [r.getMessage() for r in caplog.records if "stopped; jobs left" in r.getMessage()]
    assert len(stopped) == 1
    assert "jobs left: 3: 1 (1 running) in ComfyUI; 2 waiting in the gateway's line" in stopped[0]

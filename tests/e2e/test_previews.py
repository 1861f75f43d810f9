"""Live previews on StreamProgress, against the simulator over real sockets.

The simulator runs with ``--preview-method auto``; the gateway negotiates
preview metadata (type-4 frames) unless the test makes it ask for nothing,
in which case ComfyUI sends type-1 frames attributed by the progress before
them.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.comfyui import socket as comfyui_socket
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from PIL import Image
from testkit import gateway_settings

from .helpers import (
    collect,
    event_kind,
    field_violations,
    preview_workflow,
    small_image,
    workflow_request,
)

STEPS, FPS = 4, 10.0
"""Steps 0.3 s apart (see preview_workflow) at 10 fps (0.1 s): each step's preview must get through."""


@pytest.fixture(params=["type4", "type1"])
async def preview_gateway(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Simulator, Gateway]]:
    if request.param == "type1":  # a gateway that asks for no metadata gets type-1 frames
        monkeypatch.setattr(
            comfyui_socket, "FEATURE_FLAGS", json.dumps({"type": "feature_flags", "data": {}})
        )
    sim = Simulator(output_dir=tmp_path / "comfyui", step_seconds=0.25, preview_method="auto")
    await sim.start(host="127.0.0.1", port=0)
    gw = Gateway(gateway_settings(tmp_path, sim.url))
    await gw.start()
    try:
        assert await gw.wait_backends(10.0)
        yield sim, gw
    finally:
        await gw.stop(grace=1.0)
        await sim.close()


@pytest.fixture
async def preview_stub(
    preview_gateway: tuple[Simulator, Gateway],
) -> AsyncIterator[pb_grpc.GenerationServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{preview_gateway[1].port}") as channel:
        yield pb_grpc.GenerationServiceStub(channel)


async def _stream(
    stub: pb_grpc.GenerationServiceStub, job_id: str, **options: object
) -> list[pb.ProgressEvent]:
    request = pb.StreamProgressRequest(job_id=job_id, after_sequence=0, **options)  # type: ignore[arg-type]
    return [event async for event in stub.StreamProgress(request, timeout=60)]


def _decoded_size(preview: pb.NodePreview) -> tuple[int, int]:
    with Image.open(io.BytesIO(preview.image)) as image:
        image.load()
        assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[preview.content_type]
        return image.size


async def test_previews_reach_the_streams_that_ask_and_no_others(
    preview_stub: pb_grpc.GenerationServiceStub,
) -> None:
    job = await preview_stub.Generate(workflow_request(preview_workflow()))
    with_previews, without = await asyncio.gather(
        _stream(preview_stub, job.job_id, include_previews=True, preview_max_fps=FPS),
        _stream(preview_stub, job.job_id),
    )
    previews = [e.preview for e in with_previews if event_kind(e) == "preview"]
    assert previews, [event_kind(e) for e in with_previews]
    # At least one per step, each attributed to the node, with its step.
    assert {p.value for p in previews} == set(range(1, STEPS + 1))
    for preview in previews:
        assert (preview.node_id, preview.class_type, preview.max) == ("2", "TestSlowProgress", 4)
        assert preview.content_type == "image/jpeg"
        assert _decoded_size(preview) == (64, 64)
    assert not [e for e in without if event_kind(e) == "preview"]
    assert event_kind(with_previews[-1]) == "succeeded"


async def test_previews_consume_no_sequence_numbers(
    preview_stub: pb_grpc.GenerationServiceStub,
) -> None:
    job = await preview_stub.Generate(workflow_request(preview_workflow(steps=3)))
    live = await _stream(preview_stub, job.job_id, include_previews=True, preview_max_fps=FPS)
    assert any(event_kind(e) == "preview" for e in live)
    # A preview carries the sequence of the event before it; events stay 1, 2, 3...
    last = 0
    events = []
    for event in live[1:]:
        if event_kind(event) == "preview":
            assert event.sequence == last
        else:
            events.append((event.sequence, event_kind(event)))
            last = event.sequence
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    # A replay, with or without previews, is exactly the events: no previews, same numbers.
    replayed = await collect(preview_stub, job.job_id, after=0)
    assert [(e.sequence, event_kind(e)) for e in replayed[1:]] == events
    resumed = await _stream(preview_stub, job.job_id, include_previews=True)
    assert [(e.sequence, event_kind(e)) for e in resumed[1:]] == events


async def test_sampler_previews_show_the_ksampler_forming(
    preview_stub: pb_grpc.GenerationServiceStub,
) -> None:
    job = await preview_stub.Generate(small_image(width=128, height=128, steps=3))
    live = await _stream(preview_stub, job.job_id, include_previews=True, preview_max_fps=FPS)
    previews = [e.preview for e in live if event_kind(e) == "preview"]
    assert {p.value for p in previews} == {1, 2, 3}
    assert {p.class_type for p in previews} == {"KSampler"}
    assert {_decoded_size(p) for p in previews} == {(16, 16)}


async def test_malformed_preview_frames_are_counted_and_skipped(
    preview_gateway: tuple[Simulator, Gateway], preview_stub: pb_grpc.GenerationServiceStub
) -> None:
    sim, gateway = preview_gateway
    sim.faults.malformed_messages = {"preview"}
    job = await preview_stub.Generate(workflow_request(preview_workflow(steps=2)))
    live = await _stream(preview_stub, job.job_id, include_previews=True, preview_max_fps=FPS)
    assert event_kind(live[-1]) == "succeeded"  # the socket lived through them
    assert not [e for e in live if event_kind(e) == "preview"]
    (backend,) = list(gateway.pool)
    assert backend.errors.totals.get("ws_preview") == 2
    assert backend.socket.reconnects == 0
    sim.faults.malformed_messages = set()
    job = await preview_stub.Generate(workflow_request(preview_workflow(steps=1, prefix="ok")))
    live = await _stream(preview_stub, job.job_id, include_previews=True, preview_max_fps=FPS)
    assert [e.preview.value for e in live if event_kind(e) == "preview"] == [1]


@pytest.mark.parametrize("fps", [0.0, -1.0, 10.5, float("nan")])
async def test_a_preview_rate_out_of_range_is_invalid(
    stub: pb_grpc.GenerationServiceStub, fps: float
) -> None:
    job = await stub.Generate(small_image())
    request = pb.StreamProgressRequest(job_id=job.job_id, include_previews=True)
    request.preview_max_fps = fps
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamProgress(request, timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preview_max_fps" in field_violations(caught.value)

"""Preview frames: strict reading, attribution to prompt/node/step, and the
newest-only merge into a progress stream."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import pytest
from comfyui_grpc.comfyui import messages as m
from comfyui_grpc.comfyui.messages import MalformedMessage
from comfyui_grpc.comfyui.previews import PreviewAttribution, read_frame
from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.log import EventLog
from comfyui_grpc.jobs.model import JobState
from comfyui_grpc.jobs.previews import NodePreview, PreviewSlot, with_previews
from PIL import Image


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="JPEG")
    return out.getvalue()


JPEG = _jpeg()
PNG = b"\x89PNG\r\n\x1a\n" + b"rest"


def legacy(image: bytes, code: int = 1) -> bytes:
    return struct.pack(">II", 1, code) + image


def with_meta(image: bytes, **meta: object) -> bytes:
    fields: dict[str, object] = {
        "node_id": "3",
        "prompt_id": "p1",
        "display_node_id": "3",
        "parent_node_id": None,
        "real_node_id": "3",
        "image_type": "image/jpeg",
    }
    fields.update(meta)
    blob = json.dumps(fields).encode()
    return struct.pack(">II", 4, len(blob)) + blob + image


def test_both_frame_formats_are_read() -> None:
    one = read_frame(legacy(JPEG))
    assert one is not None
    assert one.content_type == "image/jpeg"
    assert one.image == JPEG
    assert one.prompt_id is None
    assert one.node is None
    png = read_frame(legacy(PNG, 2))
    assert png is not None
    assert png.content_type == "image/png"
    four = read_frame(with_meta(JPEG))
    assert four is not None
    assert (four.prompt_id, four.node, four.content_type, four.image) == (
        "p1",
        "3",
        "image/jpeg",
        JPEG,
    )


def test_text_frames_are_not_previews() -> None:
    node = b"4"
    assert read_frame(struct.pack(">II", 3, len(node)) + node + b"width: 64") is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        struct.pack(">I", 1),
        legacy(JPEG, 7),  # no such image format
        legacy(b""),  # no image
        legacy(PNG, 1),  # claims JPEG, is PNG
        struct.pack(">II", 4, 10_000) + b"{}",  # metadata longer than the frame
        struct.pack(">II", 4, 3) + b"{x}" + JPEG,  # metadata not JSON
        struct.pack(">II", 4, 2) + b"[]" + JPEG,  # metadata not an object
        with_meta(JPEG, prompt_id=None),
        with_meta(JPEG, node_id=5),
        with_meta(JPEG, image_type="image/bmp"),
        with_meta(PNG),  # claims JPEG
    ],
)
def test_malformed_preview_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(MalformedMessage) as caught:
        read_frame(frame)
    assert caught.value.kind == "preview"


def _feed(attribution: PreviewAttribution, items: list[m.Message | bytes]) -> list[m.Message]:
    out: list[m.Message] = []
    for item in items:
        if isinstance(item, bytes):
            frame = read_frame(item)
            assert frame is not None
            out.extend(attribution.binary(frame))
        else:
            out.extend(attribution.text(item))
    return out


def test_a_legacy_preview_belongs_to_the_progress_before_it() -> None:
    out = _feed(
        PreviewAttribution(),
        [
            m.ExecutionStart("p1"),
            m.Executing("p1", "2"),
            m.Progress("p1", "2", 1, 3),
            legacy(JPEG),
            m.Progress("p1", "2", 2, 3),
            legacy(JPEG),
        ],
    )
    previews = [p for p in out if isinstance(p, m.Preview)]
    assert [(p.prompt_id, p.node, p.value, p.max) for p in previews] == [
        ("p1", "2", 1, 3),
        ("p1", "2", 2, 3),
    ]


def test_a_legacy_preview_with_no_running_prompt_is_dropped() -> None:
    attribution = PreviewAttribution()
    out = _feed(attribution, [m.Executing("p1", None), legacy(JPEG)])
    assert not [p for p in out if isinstance(p, m.Preview)]


def test_a_metadata_preview_takes_its_step_from_the_progress_after_it() -> None:
    out = _feed(
        PreviewAttribution(),
        [m.ExecutionStart("p1"), with_meta(JPEG), m.Progress("p1", "3", 4, 20)],
    )
    assert isinstance(out[1], m.Preview)
    assert isinstance(out[2], m.Progress)
    assert (out[1].prompt_id, out[1].node, out[1].value, out[1].max) == ("p1", "3", 4, 20)


def test_a_metadata_preview_not_followed_by_its_progress_has_no_step() -> None:
    out = _feed(
        PreviewAttribution(),
        [with_meta(JPEG), with_meta(JPEG, node_id="9"), m.Progress("p1", "3", 4, 20)],
    )
    previews = [p for p in out if isinstance(p, m.Preview)]
    assert [(p.node, p.value, p.max) for p in previews] == [("3", 0, 0), ("9", 0, 0)]


# -- the merge into a stream -----------------------------------------------------


def _event(log: EventLog, payload: ev.Payload, state: JobState = JobState.RUNNING) -> None:
    log.append(
        ev.Event(job_id="j", sequence=log.next_sequence(), state=state, time=0.0, payload=payload)
    )


def _preview(value: int) -> NodePreview:
    return NodePreview("3", "KSampler", "image/jpeg", JPEG, value, 20)


async def test_a_slow_reader_gets_events_first_then_only_the_newest_preview() -> None:
    log, slot = EventLog(), PreviewSlot()
    sub = log.subscribe()
    stream = with_previews(sub, slot, 0.0)
    _event(log, ev.Started())
    for value in (1, 2, 3):
        slot.publish(_preview(value))
    _event(log, ev.NodeStarted(node_id="3", class_type="KSampler"))
    first = await anext(stream)
    second = await anext(stream)
    third = await anext(stream)
    assert isinstance(first, ev.Event)
    assert isinstance(first.payload, ev.Started)
    assert isinstance(second, ev.Event)
    assert isinstance(second.payload, ev.NodeStarted)
    assert third == _preview(3)
    # Nothing newer: the stream waits for the next event rather than resending.
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert not waiting.done()
    _event(log, ev.Cancelled(was_running=True), JobState.CANCELLED)
    last = await waiting
    assert isinstance(last, ev.Event)
    assert last.terminal
    slot.publish(_preview(4))  # after the terminal event: never sent
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await stream.aclose()


async def test_a_preview_wakes_a_waiting_stream_and_is_rate_limited() -> None:
    log, slot = EventLog(), PreviewSlot()
    stream = with_previews(log.subscribe(), slot, 3600.0)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    slot.publish(_preview(1))
    assert await waiting == _preview(1)
    # Within the interval a newer preview waits, but events still flow at once.
    slot.publish(_preview(2))
    _event(log, ev.Started())
    item = await anext(stream)
    assert isinstance(item, ev.Event)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    assert not slot._watchers


async def test_a_stream_stops_watching_when_closed() -> None:
    log, slot = EventLog(), PreviewSlot()
    stream = with_previews(log.subscribe(), slot, 0.0)
    slot.publish(_preview(1))
    assert await anext(stream) == _preview(1)
    await stream.aclose()
    assert not slot._watchers

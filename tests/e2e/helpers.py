"""Small helpers for end-to-end tests over the real gRPC port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from comfyui_grpc.app import Gateway
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from testkit import gateway_settings

TERMINAL = {"succeeded", "failed", "cancelled"}


def small_image(prompt: str = "a lighthouse", **fields: object) -> pb.GenerateRequest:
    """A cheap text-to-image request; ``request_id``/``labels`` go on the envelope."""
    envelope = {k: fields.pop(k) for k in ("request_id", "labels", "priority") if k in fields}
    params = {"prompt": prompt, "width": 64, "height": 64, "steps": 3, "seed": 7}
    params.update(fields)
    return pb.GenerateRequest(text_to_image=pb.TextToImage(**params), **envelope)  # type: ignore[arg-type]


def slow_workflow(steps: int, seconds_per_step: float, prefix: str = "slow") -> dict[str, object]:
    """EmptyImage -> TestSlowProgress -> SaveImage, as in the recorded scenarios."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "TestSlowProgress",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds_per_step},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def workflow_request(graph: dict[str, object], **kwargs: object) -> pb.GenerateRequest:
    struct = struct_pb2.Struct()
    struct.update(graph)
    return pb.GenerateRequest(workflow=struct, **kwargs)  # type: ignore[arg-type]


async def collect(
    stub: pb_grpc.GenerationServiceStub, job_id: str, after: int | None = None
) -> list[pb.ProgressEvent]:
    request = pb.StreamProgressRequest(job_id=job_id)
    if after is not None:
        request.after_sequence = after
    return [event async for event in stub.StreamProgress(request, timeout=60)]


def event_kind(event: pb.ProgressEvent) -> str:
    return event.WhichOneof("event") or ""


async def until_event(
    stub: pb_grpc.GenerationServiceStub, job_id: str, kind: str
) -> pb.ProgressEvent:
    """Follow the job from its start to its first event of ``kind``."""
    stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id, after_sequence=0))
    async for event in stream:
        if event_kind(event) == kind:
            stream.cancel()
            return event
    raise AssertionError(f"the job ended before a {kind!r} event")


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def status_details(
    error: grpc.aio.AioRpcError,
) -> tuple[
    error_details_pb2.ErrorInfo | None,
    error_details_pb2.BadRequest | None,
    error_details_pb2.RetryInfo | None,
]:
    """The ErrorInfo, BadRequest and RetryInfo details of a failed call (None if absent)."""
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    found: dict[str, object] = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return (
        found.get("ErrorInfo"),  # type: ignore[return-value]
        found.get("BadRequest"),
        found.get("RetryInfo"),
    )


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, *urls: str, **overrides: object
) -> AsyncIterator[tuple[Gateway, pb_grpc.GenerationServiceStub]]:
    """A gateway on a real port, its backends connected and their inventory
    read, and a stub to it; stopped on the way out."""
    gw = Gateway(gateway_settings(tmp_path, *urls, **overrides))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            yield gw, pb_grpc.GenerationServiceStub(channel)
    finally:
        await gw.stop(grace=0)


def preview_workflow(
    steps: int = 4, prefix: str = "pv", seconds_per_step: float = 0.3
) -> dict[str, object]:
    """A sampler-like node that sends a preview image with each step."""
    graph = slow_workflow(steps, seconds_per_step, prefix)
    node: dict[str, Any] = graph["2"]  # type: ignore[assignment]
    node["inputs"]["send_preview"] = True
    return graph

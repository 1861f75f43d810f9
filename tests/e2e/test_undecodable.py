"""Bytes that are no request at all get INVALID_ARGUMENT, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc

SERVICE = "/comfyui_grpc.v1.GenerationService"
GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint longer than protobuf allows
BAD_UTF8 = b"\x0a\x02\xc3\x28"  # job_id (field 1) holding invalid UTF-8


def _raw(value: bytes) -> bytes:
    return value


@pytest.mark.parametrize("payload", [GARBAGE, BAD_UTF8])
@pytest.mark.parametrize("method", ["Generate", "GetResult", "StreamProgress"])
async def test_undecodable_requests_are_invalid_argument(
    channel: grpc.aio.Channel, stub: pb_grpc.GenerationServiceStub, method: str, payload: bytes
) -> None:
    if method == "StreamProgress":
        call = channel.unary_stream(f"{SERVICE}/{method}", _raw, _raw)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call(payload, timeout=5):
                pass
    else:
        unary = channel.unary_unary(f"{SERVICE}/{method}", _raw, _raw)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(payload, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in (info.value.details() or "")
    # The server is fine afterwards.
    await stub.ListJobs(pb.ListJobsRequest(), timeout=5)


async def test_undecodable_upload_chunk_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    upload = channel.stream_unary(f"{SERVICE}/UploadInput", _raw, _raw)
    first = pb.UploadInputRequest(
        metadata=pb.UploadInputMetadata(filename="in.png")
    ).SerializeToString()

    async def parts():  # type: ignore[no-untyped-def]
        yield first
        yield GARBAGE

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await upload(parts(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

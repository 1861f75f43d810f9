"""A malformed UploadInput stream gets the gateway's own INVALID_ARGUMENT.

A grpcio asyncio client that is still writing when the server answers
reports INTERNAL instead of the server's status (grpc/grpc#36066), so the
gateway answers a malformed stream only once the client has sent all of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from support.gateway_process import GatewayProcess

from .helpers import field_violations

CHUNK = pb.UploadInputRequest(chunk=b"\x00" * 65536)
METADATA = pb.UploadInputRequest(metadata=pb.UploadInputMetadata(filename="in.png"))
STREAMS = {
    "chunk first": ([CHUNK] * 64, "metadata"),
    "metadata twice": ([METADATA, METADATA] + [CHUNK] * 64, "metadata"),
}


async def _parts(parts: list[pb.UploadInputRequest]) -> AsyncIterator[pb.UploadInputRequest]:
    for part in parts:
        yield part


async def test_malformed_upload_streams_are_invalid_argument_every_time(
    simulator: Simulator, tmp_path: Path
) -> None:
    # Its own process: the race needs a server that answers while the client writes.
    gateway = GatewayProcess(simulator.url, tmp_path, state=False)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            for shape, (parts, field) in STREAMS.items():
                for _ in range(10):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.UploadInput(_parts(parts), timeout=10)
                    error = info.value
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (shape, error)
                    assert field in field_violations(error)
    finally:
        await gateway.kill()

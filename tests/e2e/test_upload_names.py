"""UploadInput names that could leave ComfyUI's input folder are the caller's
mistake (INVALID_ARGUMENT), whatever state the backends are in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from support.net import free_port
from testkit import gateway_settings

from .helpers import field_violations

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64
BAD_SUBFOLDERS = [" ../x", "a/ ../../x", ". ./x", "a/ .", "x /y", " x", "..", "a//b", "/abs"]
BAD_FILENAMES = [" ..", ". .", " in.png", "in.png ", "a/in.png", "..\\in.png"]


async def _upload(
    stub: pb_grpc.GenerationServiceStub, filename: str, subfolder: str = ""
) -> pb.UploadInputResponse:
    async def parts() -> AsyncIterator[pb.UploadInputRequest]:
        metadata = pb.UploadInputMetadata(filename=filename, subfolder=subfolder)
        yield pb.UploadInputRequest(metadata=metadata)
        yield pb.UploadInputRequest(chunk=PNG)

    return await stub.UploadInput(parts(), timeout=10)


async def _refused(stub: pb_grpc.GenerationServiceStub, filename: str, subfolder: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, filename, subfolder)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    (field,) = field_violations(info.value)
    return field


@pytest.mark.parametrize("subfolder", BAD_SUBFOLDERS)
async def test_subfolders_of_dots_and_spaces_are_invalid(
    stub: pb_grpc.GenerationServiceStub, subfolder: str
) -> None:
    assert await _refused(stub, "in.png", subfolder) == "metadata.subfolder"


@pytest.mark.parametrize("filename", BAD_FILENAMES)
async def test_filenames_of_dots_and_spaces_are_invalid(
    stub: pb_grpc.GenerationServiceStub, filename: str
) -> None:
    assert await _refused(stub, filename, "") == "metadata.filename"


async def test_a_bad_name_is_invalid_even_with_no_backend_up(tmp_path: Path) -> None:
    # Nothing listens at the backend's address: no backend is ever up.
    gateway = Gateway(gateway_settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    await gateway.start()
    try:
        assert not gateway.pool.healthy
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            assert await _refused(stub, "in.png", " ../x") == "metadata.subfolder"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _upload(stub, "in.png", "fine")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await gateway.stop(grace=0)


async def test_ordinary_names_still_upload(stub: pb_grpc.GenerationServiceStub) -> None:
    for subfolder in ("", "a/b", "..x/y.z", "my inputs/day 1"):
        uploaded = await _upload(stub, "in put.png", subfolder)
        assert uploaded.name == "in put.png"
        assert uploaded.subfolder == subfolder

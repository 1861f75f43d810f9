"""The gateway driven by the real grpcurl binary, with reflection only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from testkit import gateway_settings, require_tool

from .test_operations import _certificates

SERVICE = "comfyui_grpc.v1.GenerationService"


async def grpcurl(
    gateway: Gateway, *args: str, data: str | None = None, flags: tuple[str, ...] = ("-plaintext",)
) -> tuple[int, str, str]:
    binary = require_tool("grpcurl")
    argv = [binary, *flags, "-max-time", "60"]
    if data is not None:
        argv += ["-d", data]
    argv += [f"127.0.0.1:{gateway.port}", *args]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def json_stream(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty JSON object per message."""
    decoder = json.JSONDecoder()
    items, index = [], 0
    text = text.strip()
    while index < len(text):
        item, end = decoder.raw_decode(text, index)
        items.append(item)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return items


async def test_list_and_describe_through_reflection(gateway: Gateway) -> None:
    code, out, err = await grpcurl(gateway, "list")
    assert code == 0, err
    assert SERVICE in out.split()
    assert "grpc.health.v1.Health" in out.split()
    code, out, err = await grpcurl(gateway, "describe", SERVICE)
    assert code == 0, err
    for rpc in (
        "Generate",
        "StreamProgress",
        "CancelJob",
        "GetResult",
        "ListJobs",
        "UploadInput",
        "ReadArtifact",
    ):
        assert f"rpc {rpc}" in out
    code, out, err = await grpcurl(gateway, "describe", "comfyui_grpc.v1.JobState")
    assert code == 0, err
    assert "JOB_STATE_UNSPECIFIED = 0" in out


async def test_generate_stream_and_result(gateway: Gateway) -> None:
    request = {"text_to_image": {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}}
    code, out, err = await grpcurl(gateway, f"{SERVICE}/Generate", data=json.dumps(request))
    assert code == 0, err
    generated = json.loads(out)
    job_id = generated["job_id"]
    assert generated["state"] == "JOB_STATE_QUEUED"

    code, out, err = await grpcurl(
        gateway,
        f"{SERVICE}/StreamProgress",
        data=json.dumps({"job_id": job_id, "after_sequence": 0}),
    )
    assert code == 0, err
    events = json_stream(out)
    assert "snapshot" in events[0]
    assert "succeeded" in events[-1]
    assert any("node_progress" in e for e in events)

    code, out, err = await grpcurl(
        gateway, f"{SERVICE}/GetResult", data=json.dumps({"job_id": job_id, "wait_timeout": "30s"})
    )
    assert code == 0, err
    job = json.loads(out)["job"]
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["artifacts"][0]["content_type"] == "image/png"


async def test_errors_reach_grpcurl_as_statuses(gateway: Gateway) -> None:
    code, _out, err = await grpcurl(
        gateway, f"{SERVICE}/Generate", data='{"text_to_image": {"prompt": "x", "width": 7}}'
    )
    assert code != 0
    assert "InvalidArgument" in err
    assert "text_to_image.width" in err

    code, _out, err = await grpcurl(
        gateway, f"{SERVICE}/GetResult", data='{"job_id": "00000000-0000-4000-8000-000000000000"}'
    )
    assert code != 0
    assert "NotFound" in err


@pytest.mark.parametrize("service", ["", SERVICE])
async def test_health_is_serving(gateway: Gateway, service: str) -> None:
    code, out, err = await grpcurl(
        gateway, "grpc.health.v1.Health/Check", data=json.dumps({"service": service})
    )
    assert code == 0, err
    assert json.loads(out)["status"] == "SERVING"


async def test_token_and_tls_of_the_gateway_itself(simulator: Simulator, tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text("grpcurl-token\n")
    settings = gateway_settings(
        tmp_path,
        simulator.url,
        auth_token_file=str(tokens),
        tls_cert=str(certs["server.crt"]),
        tls_key=str(certs["server.key"]),
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        assert await gateway.wait_backends(10)
        tls = ("-cacert", str(certs["ca.crt"]), "-servername", "localhost")
        token = ("-H", "authorization: Bearer grpcurl-token")
        # Reflection and health stay open: no token needed.
        code, out, err = await grpcurl(gateway, "list", flags=tls)
        assert code == 0, err
        assert SERVICE in out.split()
        listing = json.dumps({"page_size": 1})
        code, _out, err = await grpcurl(gateway, f"{SERVICE}/ListJobs", data=listing, flags=tls)
        assert code != 0
        assert "Unauthenticated" in err
        assert "Bearer" in err
        wrong = ("-H", "authorization: Bearer not-it")
        code, _out, err = await grpcurl(
            gateway, f"{SERVICE}/ListJobs", data=listing, flags=tls + wrong
        )
        assert "Unauthenticated" in err
        code, out, err = await grpcurl(
            gateway, f"{SERVICE}/ListJobs", data=listing, flags=tls + token
        )
        assert code == 0, err
        # Plaintext to the TLS port gets nowhere, token or not.
        code, _out, err = await grpcurl(
            gateway, f"{SERVICE}/ListJobs", data=listing, flags=("-plaintext", *token)
        )
        assert code != 0
    finally:
        await gateway.stop(grace=0)

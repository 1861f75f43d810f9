"""Completion callbacks over real ports: the gateway, the simulator and a
webhook receiver on 127.0.0.1 (so these gateways allow 127.0.0.1/32 and http)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from comfyui_grpc_client import CallbackSignatureError, parse_callback, verify_callback
from support.callback_receiver import CallbackReceiver
from support.gateway_process import GatewayProcess
from support.net import free_port
from testkit import gateway_settings

from .helpers import field_violations, small_image

SECRET = "first-secret"
OLD_SECRET = "old-secret"
SIGNATURE = "X-ComfyUI-GRPC-Signature"
DELIVERY = "X-ComfyUI-GRPC-Delivery"

Resolver = Callable[[str, int], Awaitable[list[str]]]


def _secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "callback-secret"
    path.write_text(f"{SECRET}\n{OLD_SECRET}\n")
    return path


@asynccontextmanager
async def _gateway(
    simulator: Simulator,
    tmp_path: Path,
    *,
    allow: Sequence[str] = ("127.0.0.1/32",),
    allow_http: bool = True,
    resolver: Resolver | None = None,
    **overrides: object,
) -> AsyncIterator[tuple[Gateway, pb_grpc.GenerationServiceStub]]:
    settings = gateway_settings(
        tmp_path,
        simulator.url,
        callback_allow=tuple(allow),
        callback_allow_http=allow_http,
        callback_secret_file=str(_secret_file(tmp_path)),
        **overrides,
    )
    gw = Gateway(settings) if resolver is None else Gateway(settings, callback_resolver=resolver)
    await gw.start()
    try:
        assert await gw.wait_backends(10.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            yield gw, pb_grpc.GenerationServiceStub(channel)
    finally:
        await gw.stop(grace=1.0)


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    r = CallbackReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def _with_callback(request: pb.GenerateRequest, url: str) -> pb.GenerateRequest:
    request.callback.url = url
    return request


async def _settled(
    stub: pb_grpc.GenerationServiceStub, job_id: str, timeout: float = 20.0
) -> job_pb2.Job:
    """The job once its callback is no longer PENDING (GetResult, asked until then)."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=10)).job
        if (
            job.state
            in (
                job_pb2.JOB_STATE_SUCCEEDED,
                job_pb2.JOB_STATE_FAILED,
                job_pb2.JOB_STATE_CANCELLED,
            )
            and job.callback_state != job_pb2.CALLBACK_STATE_PENDING
        ):
            return job
        assert time.monotonic() < deadline, f"callback still pending: {job}"
        await asyncio.sleep(0.05)


def _metric(gw: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    return gw.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _without_delivery_fields(job: job_pb2.Job) -> job_pb2.Job:
    copy = job_pb2.Job()
    copy.CopyFrom(job)
    for name in ("callback_state", "callback_attempts", "callback_last_error"):
        copy.ClearField(name)
    return copy


async def test_the_callback_is_signed_and_its_body_is_the_result(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    async with _gateway(simulator, tmp_path) as (gw, stub):
        job_id = (await stub.Generate(_with_callback(small_image(), receiver.url))).job_id
        [got] = await receiver.wait_for(1)
        job = await _settled(stub, job_id)

    assert verify_callback(got.body, got.headers[SIGNATURE], SECRET)
    with pytest.raises(CallbackSignatureError) as wrong:
        verify_callback(got.body, got.headers[SIGNATURE], OLD_SECRET)  # the first line signs
    assert wrong.value.reason == "mismatch"
    with pytest.raises(CallbackSignatureError):
        verify_callback(got.body + b" ", got.headers[SIGNATURE], SECRET)
    assert got.headers["X-ComfyUI-GRPC-Job"] == job_id
    assert len(got.headers[DELIVERY]) == 36
    assert got.headers["Content-Type"] == "application/json"

    sent = parse_callback(got.body)
    assert sent.state == job_pb2.JOB_STATE_SUCCEEDED
    assert len(sent.artifacts) == 1
    assert sent.callback_state == job_pb2.CALLBACK_STATE_PENDING
    assert sent.callback_attempts == 1
    assert _without_delivery_fields(sent) == _without_delivery_fields(job)

    assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED
    assert job.callback_attempts == 1
    assert job.callback_last_error == ""
    name = "comfyui_grpc_callback_deliveries_total"
    assert _metric(gw, name, {"outcome": "delivered"}) == 1
    assert _metric(gw, "comfyui_grpc_callback_attempts_count") == 1


async def test_failures_are_retried_with_backoff_under_one_delivery_id(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    receiver.answers = [503, 502, 200]
    initial = 0.2
    async with _gateway(simulator, tmp_path, callback_retry_initial_seconds=initial) as (gw, stub):
        job_id = (await stub.Generate(_with_callback(small_image(), receiver.url))).job_id
        first, second, third = await receiver.wait_for(3)
        job = await _settled(stub, job_id)
        assert _metric(gw, "comfyui_grpc_callback_attempts_sum") == 3

    assert first.headers[DELIVERY] == second.headers[DELIVERY] == third.headers[DELIVERY]
    gap1, gap2 = second.at - first.at, third.at - second.at
    assert gap1 >= initial * 0.5 * 0.9  # jitter: half to all of the delay
    assert gap2 >= initial * 0.9  # doubled
    assert parse_callback(second.body).callback_last_error == "answered 503"
    assert parse_callback(third.body).callback_attempts == 3
    assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED
    assert job.callback_attempts == 3


async def test_retry_after_is_honoured(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    # A first retry delay of 10 minutes: only Retry-After can bring it back sooner.
    receiver.answers = [(429, {"Retry-After": "0"}), 200]
    async with _gateway(simulator, tmp_path, callback_retry_initial_seconds=600.0) as (_, stub):
        job_id = (await stub.Generate(_with_callback(small_image(), receiver.url))).job_id
        await receiver.wait_for(2)
        job = await _settled(stub, job_id)
    assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED
    assert job.callback_attempts == 2


async def test_a_400_is_final(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    receiver.answers = [400]
    async with _gateway(simulator, tmp_path, callback_retry_initial_seconds=0.05) as (gw, stub):
        job_id = (await stub.Generate(_with_callback(small_image(), receiver.url))).job_id
        job = await _settled(stub, job_id)
        rejected = _metric(gw, "comfyui_grpc_callback_deliveries_total", {"outcome": "rejected"})
    assert job.callback_state == job_pb2.CALLBACK_STATE_FAILED
    assert job.callback_attempts == 1
    assert "400" in job.callback_last_error
    assert len(receiver.received) == 1
    assert rejected == 1


@pytest.mark.parametrize(
    ("url", "flag"),
    [
        ("https://10.1.2.3/hook", "--callback-allow"),
        ("https://other.example.test/hook", "--callback-allow"),
        ("https://169.254.169.254/latest/meta-data", "--callback-allow"),
        ("http://127.0.0.1:9/hook", "--callback-allow-http"),
    ],
)
async def test_a_url_the_allow_list_does_not_name_is_refused_at_generate(
    simulator: Simulator, tmp_path: Path, url: str, flag: str
) -> None:
    allow = ("127.0.0.1/32", "hooks.example.test")
    async with _gateway(simulator, tmp_path, allow=allow, allow_http=False) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(_with_callback(small_image(), url))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert flag in (refused.value.details() or "")
        accepted = await stub.Generate(_with_callback(small_image(), "https://127.0.0.1:9/h"))
        assert accepted.job_id
    assert len(simulator.submitted_prompt_ids) == 1  # the refused one never became a job


@pytest.mark.parametrize(
    "url", ["", "not a url", "ftp://127.0.0.1/x", "https://user:pw@127.0.0.1/x", "https://:80/"]
)
async def test_a_malformed_callback_url_is_invalid_argument(
    simulator: Simulator, tmp_path: Path, url: str
) -> None:
    async with _gateway(simulator, tmp_path) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(_with_callback(small_image(), url))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["callback.url"]


async def test_callbacks_are_refused_until_the_operator_allows_them(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(_with_callback(small_image(), "https://hooks.example.com/x"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--callback-allow" in (refused.value.details() or "")


def _resolving(host: str, addresses: list[str]) -> Resolver:
    async def resolve(name: str, port: int) -> list[str]:
        if name != host:
            raise OSError(f"no such host {name}")
        return addresses

    return resolve


async def test_a_listed_name_that_resolves_to_loopback_is_not_called(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    resolver = _resolving("hooks.example.test", ["127.0.0.1"])
    async with _gateway(simulator, tmp_path, allow=("*.example.test",), resolver=resolver) as (
        gw,
        stub,
    ):
        url = f"http://hooks.example.test:{receiver.port}/hook"
        job_id = (await stub.Generate(_with_callback(small_image(), url))).job_id
        job = await _settled(stub, job_id)
        refused = _metric(gw, "comfyui_grpc_callback_deliveries_total", {"outcome": "refused"})
    assert job.callback_state == job_pb2.CALLBACK_STATE_FAILED
    assert "127.0.0.1" in job.callback_last_error
    assert receiver.received == []
    assert refused == 1


async def test_a_listed_name_is_called_at_its_checked_address_with_its_host_header(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    resolver = _resolving("hooks.example.test", ["127.0.0.1"])
    allow = ("*.example.test", "127.0.0.1/32")  # the loopback network is named: allowed
    async with _gateway(simulator, tmp_path, allow=allow, resolver=resolver) as (_, stub):
        url = f"http://hooks.example.test:{receiver.port}/hook"
        job_id = (await stub.Generate(_with_callback(small_image(), url))).job_id
        [got] = await receiver.wait_for(1)
        job = await _settled(stub, job_id)
    assert got.headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED


async def test_a_pending_callback_survives_a_gateway_restart(
    simulator: Simulator, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    receiver.answers = [503]  # the receiver is down for now
    args = [
        "--callback-allow", "127.0.0.1/32", "--callback-allow-http",
        "--callback-secret-file", str(_secret_file(tmp_path)),
        "--callback-retry-initial", "0.2",
    ]  # fmt: skip
    first = GatewayProcess(simulator.url, tmp_path, extra_args=args)
    await first.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            request = _with_callback(small_image(), receiver.url)
            job_id = (await stub.Generate(request, timeout=10)).job_id
            # A second attempt is made only once the first one's outcome is stored.
            failed, _ = await receiver.wait_for(2)
        first.signal(signal.SIGKILL)
        await first.wait()
    finally:
        await first.kill()

    receiver.answers = [200]  # back up
    receiver.received.clear()
    second = GatewayProcess(simulator.url, tmp_path, extra_args=args)
    await second.start()
    try:
        [delivered] = await receiver.wait_for(1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            job = await _settled(pb_grpc.GenerationServiceStub(channel), job_id)
    finally:
        second.signal(signal.SIGTERM)
        await second.wait()
    assert delivered.headers[DELIVERY] == failed.headers[DELIVERY]
    assert verify_callback(delivered.body, delivered.headers[SIGNATURE], SECRET)
    assert parse_callback(delivered.body).job_id == job_id
    assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED
    assert job.callback_attempts >= 2


def _readme_receiver() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Completion callbacks") : readme.index("## How it works")]
    [code] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


async def test_the_readme_receiver_accepts_a_real_callback_and_refuses_a_forged_one(
    simulator: Simulator, tmp_path: Path
) -> None:
    port = free_port()
    code = _readme_receiver().replace('("0.0.0.0", 8080)', f'("127.0.0.1", {port})')
    (tmp_path / "receiver.py").write_text(code)
    _secret_file(tmp_path)  # the receiver reads its first line, as the gateway signs with it
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "receiver.py", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 20
            while True:  # until it listens
                try:
                    forged = await http.post(
                        f"http://127.0.0.1:{port}/",
                        content=b"{}",
                        headers={SIGNATURE: f"t={int(time.time())},v1=00"},
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "the README receiver never listened"
                    await asyncio.sleep(0.05)
        assert forged.status_code == 401
        async with _gateway(simulator, tmp_path) as (_, stub):
            url = f"http://127.0.0.1:{port}/hook"
            job_id = (await stub.Generate(_with_callback(small_image(), url))).job_id
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            job = await _settled(stub, job_id)
        assert line.decode().startswith(f"{job_id} JOB_STATE_SUCCEEDED ['file://")
        assert job.callback_state == job_pb2.CALLBACK_STATE_DELIVERED
    finally:
        process.kill()
        await process.wait()

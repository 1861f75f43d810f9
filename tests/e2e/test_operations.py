"""Running it in production: metrics, health, auth, TLS, many backends, limits."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from testkit import gateway_settings, require_tool

from .helpers import event_kind, slow_workflow, small_image, workflow_request


async def _run_job(stub: pb_grpc.GenerationServiceStub) -> pb.GetResultResponse:
    response = await stub.Generate(small_image(), timeout=10)
    return await stub.GetResult(
        pb.GetResultRequest(job_id=response.job_id, wait_timeout={"seconds": 30}), timeout=40
    )


def _samples(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_metrics_after_a_job_are_right_and_promtool_clean(
    stub: pb_grpc.GenerationServiceStub, gateway: Gateway, simulator: Simulator
) -> None:
    result = await _run_job(stub)
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetResult(pb.GetResultRequest(job_id="nope"), timeout=5)
    assert gateway.metrics_server is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{gateway.metrics_server.port}/metrics")
    assert response.status_code == 200
    text = response.text
    values = _samples(text)
    assert values['comfyui_grpc_jobs_finished_total{state="succeeded"}'] == 1
    assert values['comfyui_grpc_jobs{state="succeeded"}'] == 1
    assert values['comfyui_grpc_jobs{state="running"}'] == 0
    assert values['comfyui_grpc_server_handled_total{grpc_code="OK",grpc_method="Generate"}'] == 1
    assert (
        values[
            'comfyui_grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetResult"}'
        ]
        == 1
    )
    assert (
        values["comfyui_grpc_artifact_uploaded_bytes_total"] == result.job.artifacts[0].size_bytes
    )
    assert values[f'comfyui_grpc_backend_up{{backend="{simulator.url}"}}'] == 1
    # Reopened sockets only ever add up: a counter, so rate() works on it.
    assert values[f'comfyui_grpc_backend_socket_reconnects_total{{backend="{simulator.url}"}}'] == 0
    assert "# TYPE comfyui_grpc_backend_socket_reconnects_total counter" in text
    assert values["comfyui_grpc_job_execution_seconds_count"] == 1
    assert values["comfyui_grpc_progress_streams"] == 0

    promtool = require_tool("promtool")
    checker = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await checker.communicate(text.encode())
    assert checker.returncode == 0, (out + err).decode()
    assert out == b""
    assert err == b""


async def _watch_health(channel: grpc.aio.Channel) -> AsyncIterator[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    async for response in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60):
        yield response.status


async def test_health_follows_comfyui_and_liveness_does_not(
    gateway: Gateway, simulator: Simulator, channel: grpc.aio.Channel
) -> None:
    statuses = _watch_health(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert await anext(statuses) == serving
    await simulator.stop()
    assert await anext(statuses) == not_serving
    liveness = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="liveness"), timeout=5
    )
    assert liveness.status == serving
    await simulator.start(host="127.0.0.1", port=simulator.port)
    assert await anext(statuses) == serving


async def test_token_auth(simulator: Simulator, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("first-secret\nsecond-secret\n")
    gw = Gateway(gateway_settings(tmp_path, simulator.url, auth_token_file=str(token_file)))
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            request = pb.ListJobsRequest()
            for metadata in [
                (),
                (("authorization", "Bearer wrong"),),
                (("authorization", "first-secret"),),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ListJobs(request, metadata=metadata, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Bearer" in (info.value.details() or "")
            events = stub.StreamProgress(pb.StreamProgressRequest(job_id="x"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await events.read()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for token in ("first-secret", "second-secret"):
                await stub.ListJobs(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
                )
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await gw.stop(grace=0)


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write(name: str, cert: x509.Certificate, private: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comfyui-grpc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca, ca_key)
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        leaf_key = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if name == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        write(name, builder.sign(ca_key, hashes.SHA256()), leaf_key)
    return {p.stem + p.suffix: p for p in directory.iterdir()}


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_and_mutual_tls(simulator: Simulator, tmp_path: Path, mutual: bool) -> None:
    certs = _certificates(tmp_path)
    settings = gateway_settings(
        tmp_path,
        simulator.url,
        tls_cert=str(certs["server.crt"]),
        tls_key=str(certs["server.key"]),
        tls_client_ca=str(certs["ca.crt"]) if mutual else "",
    )
    gw = Gateway(settings)
    await gw.start()
    target = f"localhost:{gw.port}"
    try:
        with_client_cert = grpc.ssl_channel_credentials(
            root_certificates=certs["ca.crt"].read_bytes(),
            private_key=certs["client.key"].read_bytes(),
            certificate_chain=certs["client.crt"].read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_client_cert) as channel:
            listed = await pb_grpc.GenerationServiceStub(channel).ListJobs(
                pb.ListJobsRequest(), timeout=5
            )
            assert list(listed.jobs) == []
        refused = [grpc.aio.insecure_channel(target)]
        if mutual:
            no_cert = grpc.ssl_channel_credentials(root_certificates=certs["ca.crt"].read_bytes())
            refused.append(grpc.aio.secure_channel(target, no_cert))
        for channel in refused:
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.GenerationServiceStub(channel).ListJobs(
                        pb.ListJobsRequest(), timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await gw.stop(grace=0)


async def test_queue_limit_gives_resource_exhausted_with_retry_hint(
    simulator: Simulator, tmp_path: Path
) -> None:
    gw = Gateway(gateway_settings(tmp_path, simulator.url, max_queued_jobs=2))
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            first = await stub.Generate(workflow_request(slow_workflow(100, 0.05, "a")), timeout=10)
            # The first job runs; two more may wait; the fourth is refused.
            stream = stub.StreamProgress(
                pb.StreamProgressRequest(job_id=first.job_id, after_sequence=0)
            )
            async for event in stream:
                if event_kind(event) == "started":
                    break
            stream.cancel()
            for prefix in ("b", "c"):
                await stub.Generate(workflow_request(slow_workflow(1, 0.0, prefix)), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Generate(workflow_request(slow_workflow(1, 0.0, "d")), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(info.value)
            assert status is not None
            retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            assert retry, "no RetryInfo detail"
            await stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id), timeout=10)
    finally:
        await gw.stop(grace=0)


@pytest.fixture
async def second_simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    sim = Simulator(output_dir=tmp_path / "comfyui-b", step_seconds=0.01)
    await sim.start(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.stop()


async def test_two_backends_share_load_and_a_dead_ones_queue_moves(
    simulator: Simulator, second_simulator: Simulator, tmp_path: Path
) -> None:
    settings = gateway_settings(
        tmp_path, simulator.url, second_simulator.url, backend_lost_after_seconds=0.5
    )
    gw = Gateway(settings)
    await gw.start()
    try:
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            # Long jobs occupy both backends, then short ones queue behind them.
            blockers = [
                await stub.Generate(
                    workflow_request(slow_workflow(400, 0.05, f"block{i}")), timeout=10
                )
                for i in range(2)
            ]
            queued = [
                await stub.Generate(workflow_request(slow_workflow(2, 0.01, f"q{i}")), timeout=10)
                for i in range(4)
            ]
            assert simulator.submitted_prompt_ids
            assert second_simulator.submitted_prompt_ids
            on_first = [q.job_id for q in queued if q.job_id in simulator.submitted_prompt_ids]
            assert 0 < len(on_first) < len(queued)
            # Kill the first backend: its waiting jobs must finish on the second,
            # once the second's long job is out of the way.
            await simulator.stop()
            await stub.CancelJob(pb.CancelJobRequest(job_id=blockers[1].job_id), timeout=10)
            for job in queued:
                result = await stub.GetResult(
                    pb.GetResultRequest(job_id=job.job_id, wait_timeout={"seconds": 60}), timeout=70
                )
                if job.job_id in on_first:
                    assert result.job.backend == second_simulator.url
                    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED, result.job.error
            # The blocker that was running on the dead backend failed with a reason.
            lost = await stub.GetResult(
                pb.GetResultRequest(job_id=blockers[0].job_id, wait_timeout={"seconds": 30}),
                timeout=40,
            )
            assert lost.job.state == job_pb2.JOB_STATE_FAILED
            assert lost.job.error.reason == "BACKEND_LOST"
    finally:
        await gw.stop(grace=0)


async def test_dns_discovery_finds_every_address(tmp_path: Path) -> None:
    # Credentials in the URL go to every address found, and show on none.
    basic = "Basic " + base64.b64encode(b"user:pw").decode()
    first = Simulator(output_dir=tmp_path / "a", step_seconds=0.0)
    await first.start(host="127.0.0.1", port=0)
    second = Simulator(output_dir=tmp_path / "b", step_seconds=0.0)
    await second.start(host="127.0.0.2", port=first.port)
    first.faults.required_authorization = second.faults.required_authorization = basic
    addresses = ["127.0.0.1", "127.0.0.2"]

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "comfyui.test"
        return list(addresses)

    settings = gateway_settings(
        tmp_path,
        f"http://user:pw@comfyui.test:{first.port}",
        comfyui_dns_discovery=True,
        dns_refresh_seconds=3600,
    )
    gw = Gateway(settings, resolver=resolver)
    await gw.start()
    try:
        assert sorted(b.url for b in gw.pool) == [first.url, second.url]
        assert await gw.wait_backends(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            jobs = [await stub.Generate(small_image(seed=i), timeout=10) for i in range(4)]
            for job in jobs:
                done = await stub.GetResult(
                    pb.GetResultRequest(job_id=job.job_id, wait_timeout={"seconds": 30}), timeout=40
                )
                assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED
        addresses.remove("127.0.0.2")
        assert gw.discovery is not None
        await gw.discovery.refresh()
        assert [b.url for b in gw.pool] == [first.url]
    finally:
        await gw.stop(grace=0)
        await first.stop()
        await second.stop()

"""Bearer tokens, TLS and mutual TLS against the gateway's own token check
and TLS (``--auth-token-file``, ``--tls-cert``/``--tls-key``, ``--tls-client-ca``)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from client_testkit import make_certificates, secured_gateway, slow_workflow
from comfyui_grpc.simulator import Simulator
from comfyui_grpc_client import (
    AsyncClient,
    ConnectionConfig,
    InvalidArgumentError,
    JobState,
    RetryPolicy,
    TLSConfig,
    UnauthenticatedError,
    UnavailableError,
)

NO_RETRY = RetryPolicy(max_attempts=1)


def _target(gateway: object) -> str:
    return f"127.0.0.1:{gateway.port}"  # type: ignore[attr-defined]


async def test_bearer_token_is_sent_on_unary_and_streaming_calls(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with secured_gateway(simulator.url, tmp_path / "gw", token="s3cret") as gateway:
        async with AsyncClient(_target(gateway), token="wrong", retry=NO_RETRY) as client:
            with pytest.raises(UnauthenticatedError) as caught:
                await client.list_jobs()
            assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(UnauthenticatedError):
                async for _ in client.watch("any-job"):
                    pass
        async with AsyncClient(_target(gateway), retry=NO_RETRY) as client:
            with pytest.raises(UnauthenticatedError):
                await client.list_jobs()
        # Every call of a whole generation (submit, progress stream, result,
        # artifact stream) carries the token, or the gateway would refuse it.
        async with AsyncClient(_target(gateway), token="s3cret") as client:
            result = await client.generate_workflow(slow_workflow(2, 0.01))
            assert result.state is JobState.SUCCEEDED
            path = await result.download(result.artifacts[0], tmp_path / "a.png")
            assert path.stat().st_size == result.artifacts[0].size_bytes
            with pytest.raises(InvalidArgumentError) as invalid:
                await client.generate_image("x", width=7)
            assert [v.field for v in invalid.value.violations] == ["text_to_image.width"]


async def test_tls_with_a_private_ca(simulator: Simulator, tmp_path: Path) -> None:
    certs = make_certificates("gateway.test")
    async with secured_gateway(
        simulator.url, tmp_path / "gw", token="t", certificates=certs
    ) as gateway:
        tls = TLSConfig(root_certificates=certs.ca, server_name="gateway.test")
        async with AsyncClient(_target(gateway), tls=tls, token="t") as client:
            assert (await client.list_jobs()).jobs == ()
        # Plaintext against a TLS port never gets through.
        async with AsyncClient(_target(gateway), token="t", retry=NO_RETRY, timeout=5) as client:
            with pytest.raises(UnavailableError):
                await client.list_jobs()
        # TLS does not stand in for the token.
        async with AsyncClient(_target(gateway), tls=tls, retry=NO_RETRY) as client:
            with pytest.raises(UnauthenticatedError):
                await client.list_jobs()


async def test_mutual_tls_from_files_and_environment(simulator: Simulator, tmp_path: Path) -> None:
    certs = make_certificates("gateway.test")
    paths = certs.write(tmp_path)
    async with secured_gateway(
        simulator.url, tmp_path / "gw", token="t", certificates=certs, require_client_cert=True
    ) as gateway:
        target = _target(gateway)
        without_cert = TLSConfig(root_certificates=certs.ca, server_name="gateway.test")
        async with AsyncClient(
            target, tls=without_cert, token="t", retry=NO_RETRY, timeout=5
        ) as client:
            with pytest.raises(UnavailableError):
                await client.list_jobs()

        config = ConnectionConfig.from_env(
            {
                "COMFYUI_GRPC_TARGET": target,
                "COMFYUI_GRPC_TOKEN": "t",
                "COMFYUI_GRPC_CA_CERT": str(paths["ca"]),
                "COMFYUI_GRPC_CLIENT_CERT": str(paths["client_cert"]),
                "COMFYUI_GRPC_CLIENT_KEY": str(paths["client_key"]),
            }
        )
        assert config.tls is not None
        tls = TLSConfig(
            config.tls.root_certificates,
            config.tls.client_certificate,
            config.tls.client_key,
            server_name="gateway.test",
        )
        async with AsyncClient(config=config, tls=tls) as client:
            assert client.config.target == target
            assert (await client.list_jobs()).jobs == ()


def test_tls_config_needs_both_halves_of_a_client_identity() -> None:
    with pytest.raises(ValueError, match="both"):
        TLSConfig(client_certificate=b"cert")

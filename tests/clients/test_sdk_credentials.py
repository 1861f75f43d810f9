"""Bearer tokens, TLS and mutual TLS, through an auth front that forwards
to the real gateway (the gateway itself speaks plaintext without auth)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from client_testkit import AuthProxy, make_certificates, running, slow_workflow
from comfyui_grpc.app import Gateway
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


async def test_bearer_token_is_sent_on_unary_and_streaming_calls(
    gateway: Gateway, tmp_path: Path
) -> None:
    async with running(AuthProxy(f"127.0.0.1:{gateway.port}", token="s3cret")) as proxy:
        async with AsyncClient(proxy.target, token="wrong", retry=NO_RETRY) as client:
            with pytest.raises(UnauthenticatedError) as caught:
                await client.list_jobs()
            assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
        async with AsyncClient(proxy.target, token="s3cret") as client:
            result = await client.generate_workflow(slow_workflow(2, 0.01))
            assert result.state is JobState.SUCCEEDED
            path = await result.download(result.artifacts[0], tmp_path / "a.png")
            assert path.stat().st_size == result.artifacts[0].size_bytes
            # Rich error details survive a hop through a proxy.
            with pytest.raises(InvalidArgumentError) as invalid:
                await client.generate_image("x", width=7)
            assert [v.field for v in invalid.value.violations] == ["text_to_image.width"]
        assert set(proxy.seen_authorization) == {"Bearer wrong", "Bearer s3cret"}


async def test_tls_with_a_private_ca(gateway: Gateway) -> None:
    certs = make_certificates("gateway.test")
    proxy = AuthProxy(f"127.0.0.1:{gateway.port}", token="t", certificates=certs)
    async with running(proxy):
        tls = TLSConfig(root_certificates=certs.ca, server_name="gateway.test")
        async with AsyncClient(proxy.target, tls=tls, token="t") as client:
            assert (await client.list_jobs()).jobs == ()
        # Plaintext against a TLS port never gets through.
        async with AsyncClient(proxy.target, token="t", retry=NO_RETRY, timeout=5) as client:
            with pytest.raises(UnavailableError):
                await client.list_jobs()


async def test_mutual_tls_from_files_and_environment(gateway: Gateway, tmp_path: Path) -> None:
    certs = make_certificates("gateway.test")
    paths = certs.write(tmp_path)
    proxy = AuthProxy(
        f"127.0.0.1:{gateway.port}", token="t", certificates=certs, require_client_cert=True
    )
    async with running(proxy):
        without_cert = TLSConfig(root_certificates=certs.ca, server_name="gateway.test")
        async with AsyncClient(
            proxy.target, tls=without_cert, token="t", retry=NO_RETRY, timeout=5
        ) as client:
            with pytest.raises(UnavailableError):
                await client.list_jobs()

        config = ConnectionConfig.from_env(
            {
                "COMFYUI_GRPC_TARGET": proxy.target,
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
            assert client.config.target == proxy.target
            assert (await client.list_jobs()).jobs == ()


def test_tls_config_needs_both_halves_of_a_client_identity() -> None:
    with pytest.raises(ValueError, match="both"):
        TLSConfig(client_certificate=b"cert")

"""The chart's TLS health probe (helm/comfyui-grpc/files/healthcheck.py), run as the
kubelet would run it: a process whose exit code says ready or not.

A real gRPC server with grpc.health.v1.Health serves TLS (optionally mutual) on 127.0.0.1
with certificates made here; the script must find the certificate's name, trust the right
roots, send the bearer token, and map each health status to the exit code.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "helm" / "comfyui-grpc" / "files" / "healthcheck.py"
SERVER_NAME = "demo-comfyui-grpc.ai.svc"
TOKEN = "probe-token-0123456789"


def require(module: str) -> ModuleType:
    """Import a test tool, or skip (fail under COMFYUI_GRPC_TEST_STRICT, as in CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get("COMFYUI_GRPC_TEST_STRICT"):
            raise
        pytest.skip(f"{module} is not installed ({error}); install the dev extra")


grpc = require("grpc")
health = require("grpc_health.v1.health")
health_pb2 = require("grpc_health.v1.health_pb2")
health_pb2_grpc = require("grpc_health.v1.health_pb2_grpc")


# --- certificates --------------------------------------------------------------------------


def _key() -> Any:
    ec = require("cryptography.hazmat.primitives.asymmetric.ec")
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    serialization = require("cryptography.hazmat.primitives.serialization")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject_name: str, key: Any, issuer: tuple[Any, Any] | None, ca: bool, names: list[str]
) -> Any:
    x509 = require("cryptography.x509")
    hashes = require("cryptography.hazmat.primitives.hashes")
    oid = require("cryptography.x509.oid")
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, subject_name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        pod_ip = x509.IPAddress(ipaddress.ip_address("10.0.0.1"))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names), pod_ip]),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_cert(cert: Any) -> bytes:
    serialization = require("cryptography.hazmat.primitives.serialization")
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca_signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TLS Secret as cert-manager writes it: tls.crt, tls.key and ca.crt."""
    directory = tmp_path_factory.mktemp("tls-ca")
    ca_key = _key()
    ca_cert = _certificate("comfyui-grpc test CA", ca_key, None, True, [])
    key = _key()
    cert = _certificate(SERVER_NAME, key, (ca_cert, ca_key), False, [SERVER_NAME, "localhost"])
    (directory / "tls.crt").write_bytes(_pem_cert(cert))
    (directory / "tls.key").write_bytes(_pem_key(key))
    (directory / "ca.crt").write_bytes(_pem_cert(ca_cert))
    return directory


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate with no ca.crt beside it."""
    directory = tmp_path_factory.mktemp("tls-self")
    key = _key()
    cert = _certificate(SERVER_NAME, key, None, False, [SERVER_NAME])
    (directory / "tls.crt").write_bytes(_pem_cert(cert))
    (directory / "tls.key").write_bytes(_pem_key(key))
    return directory


# --- a gateway stand-in: the health service, optionally behind a bearer token ------------


class _RequireToken(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        if ("authorization", f"Bearer {TOKEN}") in tuple(details.invocation_metadata):
            return continuation(details)

        def deny(request: Any, context: Any) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


def _serve(credentials: Any | None, interceptors: tuple[Any, ...] = ()) -> tuple[Any, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    servicer = health.HealthServicer()
    servicer.set("liveness", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def _tls_credentials(directory: Path, mutual: bool) -> Any:
    return grpc.ssl_server_credentials(
        [((directory / "tls.key").read_bytes(), (directory / "tls.crt").read_bytes())],
        root_certificates=(directory / "ca.crt").read_bytes() if mutual else None,
        require_client_auth=mutual,
    )


@pytest.fixture
def health_server() -> Iterator[Callable[..., int]]:
    servers: list[Any] = []

    def start(credentials: Any | None = None, interceptors: tuple[Any, ...] = ()) -> int:
        server, port = _serve(credentials, interceptors)
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None)


def probe(port: int, *args: str, **env: str) -> tuple[int, str]:
    """Run the script the way the chart's exec probe does; return (exit code, output)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_GRPC_", "GRPC_"))
    }
    environment.update(env, COMFYUI_GRPC_PORT=str(port))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def tls_env(directory: Path, mutual: bool = False) -> dict[str, str]:
    env = {
        "COMFYUI_GRPC_TLS_CERT": str(directory / "tls.crt"),
        "COMFYUI_GRPC_TLS_KEY": str(directory / "tls.key"),
    }
    if mutual:
        env["COMFYUI_GRPC_TLS_CLIENT_CA"] = str(directory / "ca.crt")
    return env


# --- the probe's verdicts -----------------------------------------------------------------


def test_mutual_tls_with_a_ca_maps_health_status_to_exit_code(
    health_server: Callable[..., int], ca_signed: Path
) -> None:
    port = health_server(_tls_credentials(ca_signed, mutual=True))
    env = tls_env(ca_signed, mutual=True)
    assert probe(port, "liveness", **env) == (0, "service 'liveness': SERVING\n")
    code, output = probe(port, "", **env)
    assert (code, output) == (1, "service '': NOT_SERVING\n")
    code, output = probe(port, "no-such-service", **env)
    assert code == 1
    assert "NOT_FOUND" in output


def test_mutual_tls_fails_without_the_client_certificate(
    health_server: Callable[..., int], ca_signed: Path
) -> None:
    port = health_server(_tls_credentials(ca_signed, mutual=True))
    code, output = probe(port, "liveness", **tls_env(ca_signed, mutual=False))
    assert code == 1, output


def test_self_signed_certificate_is_its_own_root(
    health_server: Callable[..., int], self_signed: Path
) -> None:
    port = health_server(_tls_credentials(self_signed, mutual=False))
    assert probe(port, "liveness", **tls_env(self_signed))[0] == 0


def test_the_server_name_is_verified(health_server: Callable[..., int], ca_signed: Path) -> None:
    port = health_server(_tls_credentials(ca_signed, mutual=False))
    env = tls_env(ca_signed)
    assert probe(port, "liveness", SERVER_NAME, **env)[0] == 0
    code, output = probe(port, "liveness", "somebody-else.example", **env)
    assert code == 1, output


def test_plaintext_and_bearer_token(health_server: Callable[..., int]) -> None:
    port = health_server(None, (_RequireToken(),))
    code, output = probe(port, "liveness")
    assert code == 1
    assert "UNAUTHENTICATED" in output
    tokens = f"{TOKEN},another-token"
    assert probe(port, "liveness", COMFYUI_GRPC_AUTH_TOKENS=tokens)[0] == 0


def test_nothing_listening_is_not_ready(ca_signed: Path) -> None:
    server, port = _serve(None)
    server.stop(grace=None)
    code, output = probe(port, "liveness", **tls_env(ca_signed))
    assert code == 1
    assert "cannot reach the gateway" in output


def test_usage_error() -> None:
    assert probe(1, "a", "b", "c")[0] == 2

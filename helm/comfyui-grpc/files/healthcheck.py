"""Health probe for the comfyui-grpc gateway when its gRPC port serves TLS.

Kubernetes' native gRPC probe speaks plaintext only, so with TLS on the chart runs this
script inside the gateway container (an exec probe) with the image's own Python. It asks
grpc.health.v1.Health on 127.0.0.1 and exits 0 when the service is SERVING, 1 otherwise,
printing the reason (the kubelet records it in the pod's events).

    healthcheck.py SERVICE [SERVER_NAME]

SERVICE is the health service name ("liveness", or "" for the overall status). SERVER_NAME
is the name to expect in the server certificate; by default the certificate's first DNS
name. Settings come from the gateway's environment: COMFYUI_GRPC_PORT, COMFYUI_GRPC_TLS_CERT,
COMFYUI_GRPC_TLS_KEY, COMFYUI_GRPC_TLS_CLIENT_CA (the probe then presents the server's own
certificate as its client certificate) and COMFYUI_GRPC_AUTH_TOKENS (the first token is sent
as a bearer token, in case the health service asks for one). Without COMFYUI_GRPC_TLS_CERT
it checks over plaintext.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
TIMEOUT_SECONDS = 2.0


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _peer_certificate(port: int, roots: str, cert: str, key: str, mutual: bool) -> dict:
    """Handshake with the server and return its (verified) certificate's fields."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_default_certs()
    context.load_verify_locations(cafile=roots)
    context.set_alpn_protocols(["h2"])
    if mutual:
        context.load_cert_chain(cert, key)
    with (
        socket.create_connection((HOST, port), timeout=TIMEOUT_SECONDS) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return tls.getpeercert() or {}


def _server_name(peer: dict) -> str:
    names = peer.get("subjectAltName", ())
    for kind in ("DNS", "IP Address"):
        for name_kind, value in names:
            if name_kind == kind:
                return str(value)
    for rdn in peer.get("subject", ()):
        for field, value in rdn:
            if field == "commonName":
                return str(value)
    return HOST


def _is_self_signed(peer: dict) -> bool:
    return bool(peer) and peer.get("subject") == peer.get("issuer")


def _channel(port: int, server_name: str | None) -> grpc.Channel:
    cert = os.environ.get("COMFYUI_GRPC_TLS_CERT", "")
    target = f"{HOST}:{port}"
    if not cert:
        return grpc.insecure_channel(target)
    key = os.environ.get("COMFYUI_GRPC_TLS_KEY", "")
    mutual = bool(os.environ.get("COMFYUI_GRPC_TLS_CLIENT_CA"))
    ca = os.path.join(os.path.dirname(cert), "ca.crt")
    roots_file = ca if os.path.exists(ca) else cert
    peer = _peer_certificate(port, roots_file, cert, key, mutual)
    # gRPC verifies against these roots: the Secret's ca.crt, or the certificate itself when
    # it is self-signed, or else gRPC's bundled public roots.
    roots = _read(roots_file) if roots_file == ca or _is_self_signed(peer) else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=_read(key) if mutual else None,
        certificate_chain=_read(cert) if mutual else None,
    )
    options = [("grpc.ssl_target_name_override", server_name or _server_name(peer))]
    return grpc.secure_channel(target, credentials, options=options)


def check(service: str, server_name: str | None = None) -> tuple[bool, str]:
    """Return (serving, reason) for one health service of the local gateway."""
    port = int(os.environ.get("COMFYUI_GRPC_PORT", "50051"))
    tokens = [t.strip() for t in os.environ.get("COMFYUI_GRPC_AUTH_TOKENS", "").split(",")]
    metadata = [("authorization", f"Bearer {tokens[0]}")] if tokens[0] else None
    try:
        with _channel(port, server_name) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            reply = stub.Check(request, timeout=TIMEOUT_SECONDS, metadata=metadata)
    except grpc.RpcError as error:
        return False, f"health check failed: {error.code().name}: {error.details()}"
    except (OSError, ValueError) as error:
        return False, f"cannot reach the gateway on port {port}: {error}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"service {service!r}: {status}"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: healthcheck.py SERVICE [SERVER_NAME]", file=sys.stderr)
        return 2
    serving, reason = check(argv[1], argv[2] if len(argv) == 3 else None)
    print(reason)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

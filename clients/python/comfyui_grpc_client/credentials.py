"""Where and how to connect: target, TLS (incl. mTLS) and bearer token.

Kept apart from the client so the async client, the sync client and the CLI
build their channels the same way, and so ``from_env`` reads the same
``COMFYUI_GRPC_*`` variables everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:50051"
TARGET_ENV = "COMFYUI_GRPC_TARGET"
TOKEN_ENV = "COMFYUI_GRPC_TOKEN"
TLS_ENV = "COMFYUI_GRPC_TLS"
CA_CERT_ENV = "COMFYUI_GRPC_CA_CERT"
CLIENT_CERT_ENV = "COMFYUI_GRPC_CLIENT_CERT"
CLIENT_KEY_ENV = "COMFYUI_GRPC_CLIENT_KEY"

# Keepalive pings find a dead connection during a long, quiet progress
# stream; the gateway permits one every 10 s, so 30 s stays well clear.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)


def _read(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).expanduser().read_bytes()


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS settings. With no ``root_certificates`` the system's roots are used;
    a client certificate and key together turn on mutual TLS."""

    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None
    """Name to verify the server certificate against when it differs from the
    target's host (e.g. connecting by IP address)."""

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")

    @classmethod
    def from_files(
        cls,
        ca_cert: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """Read PEM files; any of them may be omitted."""
        return cls(_read(ca_cert), _read(client_cert), _read(client_key), server_name)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Everything needed to open a channel and authenticate its calls."""

    target: str = DEFAULT_TARGET
    tls: TLSConfig | None = None
    token: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectionConfig:
        """Settings from ``COMFYUI_GRPC_TARGET``, ``_TOKEN``, ``_TLS`` (``1``),
        ``_CA_CERT``, ``_CLIENT_CERT`` and ``_CLIENT_KEY``."""
        env = os.environ if environ is None else environ
        tls: TLSConfig | None = None
        ca, cert, key = env.get(CA_CERT_ENV), env.get(CLIENT_CERT_ENV), env.get(CLIENT_KEY_ENV)
        if env.get(TLS_ENV, "").lower() in ("1", "true", "yes") or ca or cert:
            tls = TLSConfig.from_files(ca or None, cert or None, key or None)
        return cls(
            target=env.get(TARGET_ENV) or DEFAULT_TARGET,
            tls=tls,
            token=env.get(TOKEN_ENV) or None,
        )

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call: the bearer token plus any extras.

        The token travels as plain metadata rather than call credentials so it
        also works on a plaintext channel to a local or sidecar-terminated
        gateway; use TLS for anything that crosses a network.
        """
        extra = tuple(self.metadata)
        if self.token:
            return (("authorization", f"Bearer {self.token}"), *extra)
        return extra

    def channel_options(self) -> list[tuple[str, Any]]:
        options = dict(DEFAULT_CHANNEL_OPTIONS)
        if self.tls is not None and self.tls.server_name:
            options["grpc.ssl_target_name_override"] = self.tls.server_name
        options.update(dict(self.options))
        return list(options.items())

    def aio_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel; call it inside the event loop that will use it."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(
            self.target, self.tls.channel_credentials(), options=self.channel_options()
        )


def merge_metadata(
    base: Sequence[tuple[str, str]], extra: Sequence[tuple[str, str]] | None
) -> tuple[tuple[str, str], ...]:
    return (*base, *(extra or ()))

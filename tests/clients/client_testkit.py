"""Test parts for the client tests: a TCP proxy that can cut connections, an
auth proxy that checks bearer tokens over TLS, certificates, workflows.

The proxies sit between a real client and the real gateway; they exist so a
test can break the network (or demand credentials) at an exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:  # pytest imports tests/conftest.py as `conftest` while tests/ is no package
    from testkit import require_tool
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.conftest import require_tool

__all__ = [
    "AuthProxy",
    "Certificates",
    "CuttingProxy",
    "make_certificates",
    "require_tool",
    "slow_workflow",
]

FRAME_HEADERS = 0x1


def read_bytes(path: Path) -> bytes:
    """Small-file read for async tests (kept out of the coroutine for the linter)."""
    return path.read_bytes()


def slow_workflow(steps: int, seconds_per_step: float, prefix: str = "slow") -> dict[str, Any]:
    """EmptyImage -> TestSlowProgress -> SaveImage: a job that reports many steps."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "TestSlowProgress",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds_per_step},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


class CuttingProxy:
    """A TCP proxy in front of the gateway that a test can break on purpose.

    ``cut()`` aborts every open connection now (new ones are still accepted).
    ``cut_before_next_response()`` arms a one-shot trap: the next HTTP/2
    HEADERS frame the server sends on a new stream (a response, which the
    server only sends once the handler returned) is swallowed and the
    connection aborted, so the server did the work but the client never
    hears the answer.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._trap_armed = False
        self._answered_streams: set[tuple[int, int]] = set()
        self.trap_fired = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        if self._writers:
            self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def cut_before_next_response(self) -> None:
        self._trap_armed = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump_responses(connection, up_reader, writer, up_writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    async def _pump_responses(
        self,
        connection: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        """Forward server frames one by one so the trap can stop at a frame."""
        while True:
            try:
                header = await reader.readexactly(9)
                length = int.from_bytes(header[:3], "big")
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                break
            kind = header[3]
            stream = struct.unpack(">I", header[5:9])[0] & 0x7FFFFFFF
            if kind == FRAME_HEADERS and stream:
                first = (connection, stream) not in self._answered_streams
                self._answered_streams.add((connection, stream))
                if first and self._trap_armed:
                    self._trap_armed = False
                    self.cuts += 1
                    writer.transport.abort()
                    upstream.transport.abort()
                    self.trap_fired.set()
                    return
            writer.write(header + body)
            await writer.drain()
        writer.transport.abort()


@dataclass(frozen=True)
class Certificates:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    def write(self, directory: Path) -> dict[str, Path]:
        paths = {}
        for name in ("ca", "server_cert", "server_key", "client_cert", "client_key"):
            path = directory / f"{name}.pem"
            path.write_bytes(getattr(self, name))
            paths[name] = path
        return paths


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    dns: str | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
        )
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(server_name: str = "gateway.test") -> Certificates:
    """A throwaway CA with a server certificate for ``server_name`` and a client one."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comfyui-grpc test CA")])
    ca = _issue("comfyui-grpc test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(server_name, server_key, ca_name, ca_key, dns=server_name)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("test client", client_key, ca_name, ca_key, client=True)
    pem = serialization.Encoding.PEM
    return Certificates(
        ca=ca.public_bytes(pem),
        server_cert=server.public_bytes(pem),
        server_key=_pem_key(server_key),
        client_cert=client.public_bytes(pem),
        client_key=_pem_key(client_key),
    )


# Cardinality by method name: raw bytes are forwarded, so the proxy cannot
# learn it from descriptors. Unlisted methods are unary.
SERVER_STREAMING = {"StreamProgress", "ReadArtifact", "Watch"}
CLIENT_STREAMING = {"UploadInput"}
BIDI_STREAMING = {"ServerReflectionInfo"}


class AuthProxy:
    """A gRPC front that demands ``authorization: Bearer <token>`` (and, with
    certificates, TLS or mutual TLS) and forwards raw messages to the gateway,
    as an auth sidecar in front of it would."""

    def __init__(
        self,
        upstream: str,
        token: str,
        certificates: Certificates | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.upstream = upstream
        self.token = token
        self.certificates = certificates
        self.require_client_cert = require_client_cert
        self.seen_authorization: list[str] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.upstream)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Forwarder(self),))
        if self.certificates is None:
            self.port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [(self.certificates.server_key, self.certificates.server_cert)],
                root_certificates=self.certificates.ca if self.require_client_cert else None,
                require_client_auth=self.require_client_cert,
            )
            self.port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        self._server = server

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self._channel is not None:
            await self._channel.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        self.seen_authorization.extend(str(v) for v in values)
        if values != [f"Bearer {self.token}"]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    def channel(self) -> Any:
        """The upstream channel, untyped: it carries raw bytes for any method."""
        assert self._channel is not None
        return self._channel


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, proxy: AuthProxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        name = method.rsplit("/", 1)[-1]
        proxy = self.proxy
        Ctx = grpc.aio.ServicerContext[Any, Any]

        async def relay(context: Ctx, call: Any) -> AsyncIterator[bytes]:
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as exc:
                await context.abort(
                    exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
                )

        async def answer(context: Ctx, call: Any) -> bytes:
            try:
                result: bytes = await call
            except grpc.aio.AioRpcError as exc:
                await context.abort(
                    exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
                )
            return result

        if name in BIDI_STREAMING:

            async def bidi(requests: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[bytes]:
                await proxy.check(context)
                async for item in relay(context, proxy.channel().stream_stream(method)(requests)):
                    yield item

            return grpc.stream_stream_rpc_method_handler(bidi)
        if name in CLIENT_STREAMING:

            async def upload(requests: AsyncIterator[bytes], context: Ctx) -> bytes:
                await proxy.check(context)
                return await answer(context, proxy.channel().stream_unary(method)(requests))

            return grpc.stream_unary_rpc_method_handler(upload)
        if name in SERVER_STREAMING:

            async def stream(request: bytes, context: Ctx) -> AsyncIterator[bytes]:
                await proxy.check(context)
                async for item in relay(context, proxy.channel().unary_stream(method)(request)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: Ctx) -> bytes:
            await proxy.check(context)
            return await answer(context, proxy.channel().unary_unary(method)(request))

        return grpc.unary_unary_rpc_method_handler(unary)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the loop until true: for state with no event to await."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(thing: Any) -> AsyncIterator[Any]:
    await thing.start()
    try:
        yield thing
    finally:
        await thing.close()


class TerminalOutput:
    """Collects what a child process writes to a pseudo-terminal.

    Reading a pty whose other end closed fails with EIO rather than returning
    b"", which is why this is not an asyncio pipe transport.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.eof = False
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.data.extend(chunk)
        else:
            self.eof = True
            self._loop.remove_reader(self.fd)
        self._changed.set()

    async def wait_for(self, needle: bytes, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.data:
                if self.eof:
                    raise AssertionError(f"output ended before {needle!r}: {bytes(self.data)!r}")
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        if not self.eof:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)

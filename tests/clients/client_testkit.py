"""Test parts for the client tests: a TCP proxy that can cut connections, the
gateway with its own tokens and TLS, certificates, workflows.

The proxy sits between a real client and the real gateway; it exists so a
test can break the network at an exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import os
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyui_grpc.app import Gateway
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:  # pytest imports tests/conftest.py as `conftest` while tests/ is no package
    from testkit import gateway_settings, require_tool
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.testkit import gateway_settings, require_tool

__all__ = [
    "EXAMPLE_TEMPLATES",
    "Certificates",
    "CuttingProxy",
    "make_certificates",
    "png_bytes",
    "require_tool",
    "secured_gateway",
    "slow_workflow",
    "templated_gateway",
]

EXAMPLE_TEMPLATES = Path(__file__).resolve().parents[2] / "examples" / "templates"

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


def _write_token(directory: Path, token: str) -> Path:
    """Small-file write for async tests (kept out of the coroutine for the linter)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokens"
    path.write_text(token + "\n")
    return path


@contextlib.asynccontextmanager
async def secured_gateway(
    comfyui_url: str,
    directory: Path,
    *,
    token: str,
    certificates: Certificates | None = None,
    require_client_cert: bool = False,
) -> AsyncIterator[Gateway]:
    """The gateway itself with its own bearer-token check and, with
    ``certificates``, its own TLS (mutual with ``require_client_cert``)."""
    token_file = _write_token(directory, token)
    options: dict[str, object] = {"auth_token_file": str(token_file)}
    if certificates is not None:
        paths = certificates.write(directory)
        options.update(tls_cert=str(paths["server_cert"]), tls_key=str(paths["server_key"]))
        if require_client_cert:
            options["tls_client_ca"] = str(paths["ca"])
    gateway = Gateway(gateway_settings(directory, comfyui_url, **options))
    await gateway.start()
    try:
        assert await gateway.wait_backends(10.0), "the gateway never connected to ComfyUI"
        yield gateway
    finally:
        await gateway.stop(grace=0)


@contextlib.asynccontextmanager
async def templated_gateway(comfyui_url: str, directory: Path) -> AsyncIterator[Gateway]:
    """The gateway serving a copy of examples/templates (sdxl-lora, image-to-image)."""
    templates = directory / "templates"
    shutil.copytree(EXAMPLE_TEMPLATES, templates)
    gateway = Gateway(gateway_settings(directory, comfyui_url, templates_dir=str(templates)))
    await gateway.start()
    try:
        assert await gateway.wait_backends(10.0), "the gateway never connected to ComfyUI"
        yield gateway
    finally:
        await gateway.stop(grace=1.0)


def png_bytes(width: int = 96, height: int = 64) -> bytes:
    """A small solid PNG to send as an input image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


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

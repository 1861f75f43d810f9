"""Gateway replicas on one PostgreSQL, for the replica sections.

PostgreSQL is the test suite's throw-away server
(``tests/support/postgres.py``: ``initdb`` in a temporary folder, ``pg_ctl``
on a free loopback port, started with ``fsync=off`` and
``synchronous_commit=off``), one per section; every cell gets an empty
database of its own. A replica is the ``comfyui-grpc serve`` the other
sections start, with ``--state-url-file``, ``--replica-id`` and a short
``--lease-seconds`` so that backends spread over the replicas within a few
seconds of start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg

from tests.support.postgres import PostgresServer, postgres_bindir

from . import servers
from .common import ChildFailed, Children

LEASE_SECONDS = 2.0
"""Leases renewed every 2/3 s: backends change hands within seconds of a start."""


@asynccontextmanager
async def postgres() -> AsyncIterator[PostgresServer]:
    """A started PostgreSQL server, stopped (and its folder removed) on exit."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ChildFailed("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    server = PostgresServer(bindir)
    try:
        await asyncio.to_thread(server.start)
    except RuntimeError as exc:
        await asyncio.to_thread(server.stop)
        raise ChildFailed(f"PostgreSQL did not start: {exc}") from None
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def postmaster_pid(pg: PostgresServer) -> int:
    """The server's main process (its backends are its children); 0 if unknown."""
    try:
        return int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0


async def new_database(pg: PostgresServer, workdir: Path, tag: str) -> tuple[str, Path]:
    """An empty database: its URL (with the password) and a 0600 file holding it."""
    name = await asyncio.to_thread(pg.create_database, "bench")
    url = pg.url(name)
    url_file = workdir / f"{tag}-state-url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    return url, url_file


async def start_replicas(
    children: Children,
    workdir: Path,
    comfyui_urls: list[str],
    s3_endpoint: str,
    url_file: Path,
    count: int,
    *,
    tag: str,
    extra: list[str] | None = None,
) -> list[servers.Server]:
    """``count`` replicas sharing the database in ``url_file``, started one after another
    (replica 1 first, so it is the first owner of every backend)."""
    backends = [arg for url in comfyui_urls[1:] for arg in ("--comfyui-url", url)]
    started = []
    for index in range(1, count + 1):
        name = f"{tag}-replica-{index}"
        argv = [
            *backends,
            "--state-url-file",
            str(url_file),
            "--replica-id",
            name,
            "--lease-seconds",
            str(LEASE_SECONDS),
            *(extra or []),
        ]
        started.append(
            await servers.start_gateway(
                children, workdir, comfyui_urls[0], s3_endpoint, tag=name, extra=argv
            )
        )
    return started


async def owners(url: str) -> dict[str, str]:
    """Backend URL -> the replica whose lease on it is live."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT backend, owner FROM backend_leases WHERE expires > now()"
        )
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def until_spread(
    url: str, backends: int, replicas: int, timeout: float = 60.0
) -> dict[str, str]:
    """Until every backend has an owner and ``min(backends, replicas)`` replicas own one."""
    deadline = time.monotonic() + timeout
    while True:
        found = await owners(url)
        if len(found) == backends and len(set(found.values())) == min(backends, replicas):
            return found
        if time.monotonic() > deadline:
            raise ChildFailed(f"backends not spread over the replicas in {timeout:.0f} s: {found}")
        await asyncio.sleep(0.1)

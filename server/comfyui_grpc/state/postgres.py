"""Job records in PostgreSQL, which several gateways can share.

The same records as the SQLite store (:mod:`comfyui_grpc.jobs.records`),
the same write-behind batches and the same :meth:`save_now` promise. What
differs is what a shared database needs:

* the schema is built by numbered migrations, recorded in
  ``schema_migrations`` and applied at start under a transaction-scoped
  advisory lock, so gateways starting together apply each step once;
* ``request_id`` is unique in the database, not only in one gateway: a job
  whose ``request_id`` another gateway recorded first is refused
  (:class:`~comfyui_grpc.state.errors.RequestIdTaken`) and never written;
* a connection pool that checks connections before use, and a batch that
  could not be written is kept and tried again (the database may restart
  under a running gateway);
* the URL may carry a password, so it is shown only through
  :func:`~comfyui_grpc.redact.redact_database_url`, and any password is cut
  out of driver messages before they are logged or returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from ..jobs import events as ev
from ..jobs.job import Job
from ..jobs.records import event_from_json, event_to_json, job_from_json, job_to_json
from ..redact import redact_database_url
from ..tasks import within
from .errors import JobMovedAway, JobStoreUnavailable, RequestIdTaken
from .store import OPEN_CALLBACK_STATES, TERMINAL_STATES, CallbackRecord, WriteBehindStore

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs and their events",
        """
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            state TEXT NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            record TEXT NOT NULL
        );
        CREATE UNIQUE INDEX jobs_by_request ON jobs (request_id) WHERE request_id <> '';
        CREATE INDEX jobs_by_state ON jobs (state);
        CREATE TABLE events (
            job_id TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (job_id, sequence)
        );
        """,
    ),
    Migration(
        2,
        "completion callbacks",
        """
        CREATE TABLE callbacks (
            job_id TEXT PRIMARY KEY,
            delivery_id TEXT NOT NULL,
            url TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            due_time DOUBLE PRECISION NOT NULL,
            next_attempt_time DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX callbacks_by_state ON callbacks (state);
        """,
    ),
    Migration(
        3,
        "several gateway replicas: shared line, holders, backend leases",
        """
        ALTER TABLE jobs ADD COLUMN holder TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN waiting BOOLEAN NOT NULL DEFAULT false;
        ALTER TABLE jobs ADD COLUMN caller TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN high BOOLEAN NOT NULL DEFAULT false;
        ALTER TABLE jobs ADD COLUMN fair_tag DOUBLE PRECISION NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN seq BIGSERIAL;
        ALTER TABLE jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN backend TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
        UPDATE jobs SET backend = COALESCE(record::json->>'backend', ''),
            caller = COALESCE(record::json->'spec'->>'caller', 'anonymous');
        UPDATE jobs SET waiting = true
            WHERE state = 'queued' AND backend = '';
        CREATE INDEX jobs_waiting ON jobs (fair_tag, seq) WHERE waiting;
        CREATE INDEX jobs_by_backend ON jobs (backend) WHERE backend <> '';
        CREATE INDEX jobs_by_holder ON jobs (holder) WHERE holder <> '';
        CREATE TABLE fair_share (caller TEXT PRIMARY KEY, finish DOUBLE PRECISION NOT NULL);
        CREATE TABLE fair_clock (
            one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
            now DOUBLE PRECISION NOT NULL
        );
        INSERT INTO fair_clock (now) VALUES (0);
        CREATE TABLE replicas (
            replica_id TEXT PRIMARY KEY,
            heartbeat TIMESTAMPTZ NOT NULL,
            started TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE backend_leases (
            backend TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires TIMESTAMPTZ NOT NULL,
            takeovers BIGINT NOT NULL DEFAULT 0
        );
        ALTER TABLE callbacks ADD COLUMN holder TEXT NOT NULL DEFAULT '';
        """,
    ),
    Migration(
        4,
        "prompts a backend may still hold after its jobs moved elsewhere",
        """
        CREATE TABLE owed_deletes (
            backend TEXT NOT NULL,
            job_id TEXT NOT NULL,
            PRIMARY KEY (backend, job_id)
        );
        """,
    ),
    Migration(
        5,
        "preview images relayed to replicas that stream a job held elsewhere",
        """
        CREATE UNLOGGED TABLE preview_watchers (
            job_id TEXT NOT NULL,
            replica TEXT NOT NULL,
            PRIMARY KEY (job_id, replica)
        );
        CREATE UNLOGGED TABLE job_previews (
            job_id TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            node_id TEXT NOT NULL,
            class_type TEXT NOT NULL,
            content_type TEXT NOT NULL,
            image BYTEA NOT NULL,
            value INTEGER NOT NULL,
            max INTEGER NOT NULL
        );
        """,
    ),
)
"""Append only: a step, once released, is never edited (databases hold it)."""

EVENTS_CHANNEL = "comfyui_grpc_events"
"""NOTIFY channel: a job's events were written (payload: :func:`event_news`)."""
MAX_NEWS_BYTES = 7000
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes and more."""

MIGRATION_LOCK = 0x636F6D667975_6772
"""``pg_advisory_xact_lock`` key held while migrating (one per database)."""


async def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the steps ``conn``'s database lacks, in order, in one transaction;
    the versions applied. A concurrent caller waits on the lock, then finds
    them applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cursor.fetchall()}
        done: list[int] = []
        for step in migrations:
            if step.version in applied:
                continue
            await conn.execute(step.sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (step.version, step.name),
            )
            done.append(step.version)
    known = max((step.version for step in migrations), default=0)
    if max(applied, default=0) > known:
        log.warning(
            "the job store's schema is at version %d, newer than this gateway's %d; "
            "a newer gateway shares the database",
            max(applied),
            known,
        )
    return done


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's row as of one moment (what a batch writes)."""

    job_id: str
    request_id: str
    state: str
    backend: str
    record: str

    @classmethod
    def of(cls, job: Job) -> JobRecord:
        return cls(job.job_id, job.spec.request_id, job.state.value, job.backend, job_to_json(job))


class PostgresJobStore(WriteBehindStore):
    """:class:`JobStore` in a PostgreSQL database named by a URL (or a file holding it)."""

    def __init__(
        self,
        url: str = "",
        *,
        url_file: str = "",
        flush_interval_seconds: float = 0.1,
        retention_seconds: float = 7 * 24 * 3600,
        pool_size: int = 4,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if bool(url) == bool(url_file):
            raise ValueError("a PostgreSQL job store needs either a URL or a file holding one")
        super().__init__(
            flush_interval_seconds=flush_interval_seconds, retention_seconds=retention_seconds
        )
        self._url = url
        self.url_file = url_file
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout_seconds
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._secrets: tuple[str, ...] = ()
        self.holder = ""
        """This replica's id once it shares the database with others: then
        only the jobs it holds are written (see :mod:`comfyui_grpc.cluster`),
        and as soon as they have news (see :meth:`_flush_forever`)."""
        self._news = asyncio.Event()

    @property
    def name(self) -> str:
        """The database as it may be shown: no password."""
        if self._url:
            return redact_database_url(self._url)
        return f"the database named in {self.url_file}"

    def __repr__(self) -> str:
        return f"PostgresJobStore({self.name})"

    # -- errors, without secrets ---------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: BaseException) -> JobStoreUnavailable:
        detail = self._scrub(" ".join(str(exc).split())) or type(exc).__name__
        return JobStoreUnavailable(f"the job store ({self.name}) cannot be used: {detail}")

    def connection(self) -> Any:
        """A pooled connection (``async with``), for the replica's shared state."""
        return self._connection()

    @property
    def url(self) -> str:
        """The URL (with any password: never shown)."""
        return self._url

    def scrub(self, text: str) -> str:
        """``text`` with any password cut out."""
        return self._scrub(text)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; connection failures become :class:`JobStoreUnavailable`."""
        if self._pool is None:
            raise JobStoreUnavailable(f"the job store ({self.name}) is closed")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None

    # -- opening and closing -----------------------------------------------------------

    def _read_url(self) -> str:
        if not self.url_file:
            return self._url
        try:
            url = Path(self.url_file).read_text().strip()
        except OSError as exc:
            raise JobStoreUnavailable(
                f"the job store URL file {self.url_file} cannot be read: {exc.strerror}"
            ) from None
        if not url or "\n" in url:
            raise JobStoreUnavailable(f"{self.url_file} must hold one PostgreSQL URL")
        self._url = url
        return url

    def _learn_secrets(self, url: str) -> None:
        """Every password that may appear in a driver message, longest first."""
        found = {os.environ.get("PGPASSWORD", "")}
        with suppress(psycopg.ProgrammingError):
            found.add(str(conninfo_to_dict(url).get("password") or ""))
        with suppress(ValueError):
            found.add(unquote(urlsplit(url).password or ""))
        self._secrets = tuple(sorted((s for s in found if s), key=len, reverse=True))

    async def open(self) -> None:
        """Connect, migrate, drop finished jobs past retention, start the flusher.

        Raises :class:`JobStoreUnavailable` with the reason (never the
        password) when the database cannot be reached.
        """
        url = self._read_url()
        self._learn_secrets(url)
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        try:
            applied = await migrate(conn)
            if applied:
                log.info("job store schema migrated to version %d", applied[-1])
            await conn.execute(
                "WITH stale AS (DELETE FROM jobs WHERE state = ANY(%s) AND updated < %s "
                "RETURNING job_id) DELETE FROM events WHERE job_id IN (SELECT job_id FROM stale)",
                (list(TERMINAL_STATES), time.time() - self.retention),
            )
            # Ended deliveries go with the retention of finished jobs; open ones never do.
            await conn.execute(
                "DELETE FROM callbacks WHERE NOT (state = ANY(%s)) AND updated < %s",
                (list(OPEN_CALLBACK_STATES), time.time() - self.retention),
            )
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            name="job store",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise self._unavailable(exc) from None
        self._pool = pool
        self._closing = False
        self._flusher = asyncio.create_task(self._flush_forever(), name="job store flusher")

    async def close(self) -> None:
        """Writes what is pending (logging what could not be), then closes the pool."""
        task, self._flusher = self._flusher, None
        if task is not None:
            self._closing = True
            self._wakeup.set()
            self._news.set()
            await task
        if self._pool is None:
            return
        try:
            await self.flush()
        except (JobStoreUnavailable, psycopg.Error) as exc:
            log.error(
                "%d job record(s) and %d event(s) not written at stop: %s",
                len(self._dirty),
                len(self._events),
                exc.message if isinstance(exc, JobStoreUnavailable) else self._scrub(str(exc)),
            )
        pool, self._pool = self._pool, None
        await pool.close()

    # -- writing -----------------------------------------------------------------------

    async def flush(self) -> set[str]:
        """Write what is pending in one transaction; the ids of jobs refused
        because another job holds their ``request_id``.

        A batch that fails is put back, under anything newer, for the next try.
        """
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> set[str]:
        if self._pool is None or (not self._dirty and not self._events):
            return set()
        jobs, events = self._dirty, self._events
        self._dirty, self._events = {}, []
        # Records as of this moment, beside exactly the events up to it: one
        # serialised after an await could be newer than the batch's events
        # (a reader would see a job ended whose terminal event is not there).
        records = [JobRecord.of(job) for job in jobs.values()]
        try:
            refused = await self._write(records, [(e, event_to_json(e)) for e in events])
        except BaseException:
            for job_id, job in jobs.items():
                self._dirty.setdefault(job_id, job)
            self._events = events + self._events
            raise
        return refused

    async def _write(self, jobs: list[JobRecord], events: list[tuple[ev.Event, str]]) -> set[str]:
        if self.holder:
            return await self._write_held(jobs, events)
        now = time.time()
        rows = [(j.job_id, j.request_id, j.state, now, j.record) for j in jobs]
        written: set[str] = set()
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            if rows:
                # Existing jobs are updated; new ones inserted unless their
                # request_id is taken (DO NOTHING covers every unique index).
                await cursor.executemany(
                    "UPDATE jobs SET state = %s, updated = %s, record = %s "
                    "WHERE job_id = %s RETURNING job_id",
                    [(state, at, record, job_id) for job_id, _, state, at, record in rows],
                    returning=True,
                )
                written |= await _returned(cursor)
                new = [row for row in rows if row[0] not in written]
                if new:
                    await cursor.executemany(
                        "INSERT INTO jobs (job_id, request_id, state, updated, record) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING job_id",
                        new,
                        returning=True,
                    )
                    written |= await _returned(cursor)
            if events:
                # Only for jobs in the table: a refused job leaves no events behind.
                await cursor.executemany(
                    "INSERT INTO events (job_id, sequence, record) "
                    "SELECT %(job)s, %(sequence)s, %(record)s "
                    "WHERE EXISTS (SELECT 1 FROM jobs WHERE job_id = %(job)s) "
                    "ON CONFLICT (job_id, sequence) DO UPDATE SET record = excluded.record",
                    [
                        {"job": e.job_id, "sequence": e.sequence, "record": text}
                        for e, text in events
                    ],
                )
        return {row[0] for row in rows} - written

    async def _write_held(
        self, jobs: list[JobRecord], events: list[tuple[ev.Event, str]]
    ) -> set[str]:
        """Write the jobs this replica holds (a job another replica has taken
        over is left alone: its id is returned), with their events, and tell
        the other replicas which jobs have news."""
        now = time.time()
        holder = self.holder
        written: set[str] = set()
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            if jobs:
                await cursor.executemany(
                    "UPDATE jobs SET state = %s, updated = %s, record = %s, backend = %s "
                    "WHERE job_id = %s AND holder = %s RETURNING job_id",
                    [(j.state, now, j.record, j.backend, j.job_id, holder) for j in jobs],
                    returning=True,
                )
                written |= await _returned(cursor)
            if events:
                # Events are fenced like records: a job another replica took
                # over gets none from this one (nor do its followers hear of them).
                await cursor.execute(
                    "INSERT INTO events (job_id, sequence, record) "
                    "SELECT w.job_id, w.sequence, w.record "
                    "FROM unnest(%s::text[], %s::bigint[], %s::text[]) "
                    "AS w(job_id, sequence, record) "
                    "JOIN jobs j ON j.job_id = w.job_id AND j.holder = %s FOR SHARE OF j "
                    "ON CONFLICT (job_id, sequence) DO NOTHING RETURNING job_id",
                    (
                        [e.job_id for e, _ in events],
                        [e.sequence for e, _ in events],
                        [text for _, text in events],
                        holder,
                    ),
                )
                held = {row[0] for row in await cursor.fetchall()}
                events = [(e, text) for e, text in events if e.job_id in held]
            if events:
                await cursor.execute(
                    "SELECT pg_notify(%s, news) FROM unnest(%s::text[]) AS news",
                    (EVENTS_CHANNEL, event_news(events)),
                )
        return {j.job_id for j in jobs} - written

    def _on_event(self, job: Job, event: ev.Event) -> None:
        super()._on_event(job, event)
        self._news.set()

    async def _flush_forever(self) -> None:
        """Write a batch every ``flush_interval`` (at once for a terminal event
        or a full buffer). While replicas share the store, other replicas'
        streams follow these writes, so news is written as soon as it comes,
        and the interval only spaces the writes (one batch at most per
        interval, from start to start): a progress step that comes after a
        quiet spell no longer waits for the interval to run out."""
        last_write = -math.inf
        while not self._closing:
            await within((self._news if self.holder else self._wakeup).wait(), self.flush_interval)
            pause = last_write + self.flush_interval - time.monotonic()
            if self.holder and pause > 0:
                await within(self._wakeup.wait(), pause)
            self._wakeup.clear()
            self._news.clear()
            if self._dirty or self._events:
                last_write = time.monotonic()
            try:
                await self.flush()
            except JobStoreUnavailable as exc:
                log.error("job records not written yet, will retry: %s", exc.message)
            except psycopg.Error as exc:
                log.error("job records not written yet, will retry: %s", self._scrub(str(exc)))

    async def save_now(self, job: Job) -> None:
        self._dirty[job.job_id] = job
        try:
            refused = await self.flush()
        except BaseException:
            if not job.log.last_sequence:
                # Being created: its caller drops it, so it must not be written later.
                self._dirty.pop(job.job_id, None)
            raise
        if job.job_id in refused and self.holder:
            raise JobMovedAway(job.job_id)
        if job.job_id in refused:
            owner = await self._owner(job.spec.request_id)
            raise RequestIdTaken(job.spec.request_id, job.job_id if owner is None else owner)

    async def _owner(self, request_id: str) -> str | None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT job_id FROM jobs WHERE request_id = %s", (request_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def forget(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._events = [e for e in self._events if e.job_id != job_id]
        async with self._connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM events WHERE job_id = %s", (job_id,))
            await conn.execute("DELETE FROM jobs WHERE job_id = %s", (job_id,))

    # -- reading -----------------------------------------------------------------------

    async def _jobs(self, query: LiteralString, args: tuple[object, ...]) -> list[Job]:
        """The jobs ``query`` selects (``job_id, record``) with their event logs."""
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(query, args)
            return await with_events(conn, await cursor.fetchall())

    async def unfinished(self) -> list[Job]:
        return await self._jobs(
            "SELECT job_id, record FROM jobs WHERE NOT (state = ANY(%s)) ORDER BY updated",
            (list(TERMINAL_STATES),),
        )

    async def by_request(self, request_id: str) -> Job | None:
        found = await self._jobs(
            "SELECT job_id, record FROM jobs WHERE request_id = %s", (request_id,)
        )
        return found[0] if found else None

    async def load(self, job_id: str) -> Job | None:
        found = await self._jobs("SELECT job_id, record FROM jobs WHERE job_id = %s", (job_id,))
        return found[0] if found else None

    # -- completion callbacks (each write is a delivery's state: written at once) ------

    async def _callbacks(
        self, where: LiteralString, args: tuple[object, ...]
    ) -> list[CallbackRecord]:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT job_id, delivery_id, url, state, attempts, last_error, due_time, "
                "next_attempt_time, updated FROM callbacks " + where,
                args,
            )
            rows = await cursor.fetchall()
        return [callback_from_row(row) for row in rows]

    async def _put_callback(self, record: CallbackRecord, conflict: LiteralString) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO callbacks (job_id, delivery_id, url, state, attempts, last_error, "
                "due_time, next_attempt_time, updated) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                + conflict,
                astuple(record),
            )

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        await self._put_callback(record, "ON CONFLICT (job_id) DO NOTHING")
        kept = await self.callback(record.job_id)
        return kept or record

    async def save_callback(self, record: CallbackRecord) -> None:
        await self._put_callback(
            record,
            "ON CONFLICT (job_id) DO UPDATE SET delivery_id = excluded.delivery_id, "
            "url = excluded.url, state = excluded.state, attempts = excluded.attempts, "
            "last_error = excluded.last_error, due_time = excluded.due_time, "
            "next_attempt_time = excluded.next_attempt_time, updated = excluded.updated",
        )

    async def callback(self, job_id: str) -> CallbackRecord | None:
        found = await self._callbacks("WHERE job_id = %s", (job_id,))
        return found[0] if found else None

    async def open_callbacks(self) -> list[CallbackRecord]:
        return await self._callbacks(
            "WHERE state = ANY(%s) ORDER BY next_attempt_time", (list(OPEN_CALLBACK_STATES),)
        )


async def with_events(
    conn: Connection, rows: Sequence[tuple[Any, ...]], *, sequence_gap: bool = True
) -> list[Job]:
    """The jobs of ``(job_id, record)`` rows, with their event logs (one query)."""
    if not rows:
        return []
    cursor = await conn.execute(
        "SELECT job_id, record FROM events WHERE job_id = ANY(%s) ORDER BY job_id, sequence",
        ([row[0] for row in rows],),
    )
    logs: dict[str, list[ev.Event]] = {}
    for job_id, text in await cursor.fetchall():
        logs.setdefault(job_id, []).append(event_from_json(job_id, text))
    return [
        job_from_json(job_id, record, logs.get(job_id, []), sequence_gap=sequence_gap)
        for job_id, record, *_ in rows
    ]


def callback_from_row(row: Sequence[Any]) -> CallbackRecord:
    """A ``callbacks`` row, its columns in :class:`CallbackRecord`'s order."""
    names = [f.name for f in fields(CallbackRecord)]
    return CallbackRecord(**dict(zip(names, row, strict=True)))


def event_news(records: list[tuple[ev.Event, str]]) -> list[str]:
    """One NOTIFY payload per job: its id, and its new events when they fit
    (a follower then needs no read; see :mod:`comfyui_grpc.cluster.mirrors`)."""
    by_job: dict[str, list[str]] = {}
    for event, text in records:
        by_job.setdefault(event.job_id, []).append(text)
    news = []
    for job_id, texts in by_job.items():
        payload = json.dumps({"job": job_id, "events": texts})
        news.append(payload if len(payload) <= MAX_NEWS_BYTES else json.dumps({"job": job_id}))
    return news


async def _returned(cursor: psycopg.AsyncCursor[tuple[Any, ...]]) -> set[str]:
    """The first column of every result of an ``executemany(..., returning=True)``."""
    values: set[str] = set()
    while True:
        for row in await cursor.fetchall():
            values.add(str(row[0]))
        if not cursor.nextset():
            return values

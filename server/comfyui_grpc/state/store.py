"""Job records in SQLite (or nowhere, for an in-memory gateway).

Writes happen on a worker thread and are batched: events and job changes
queue up and are flushed together every ``flush_interval_seconds`` in one
transaction, so a burst of progress costs one commit. The one write that
must not be late, a job's record before it is submitted to ComfyUI, is made
at once (:meth:`JobStore.save_now`): after a crash, a job id found in the
store but in neither ComfyUI queue nor history was never submitted, and
is safe to submit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path

from ..jobs import events as ev
from ..jobs.job import Job
from ..jobs.records import event_from_json, event_to_json, job_from_json, job_to_json
from ..tasks import within

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_request ON jobs (request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS callbacks (
    job_id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    due_time REAL NOT NULL,
    next_attempt_time REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_by_state ON callbacks (state);
"""
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
OPEN_CALLBACK_STATES = ("waiting", "pending")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackRecord:
    """A job's completion callback and how its delivery stands (one per job)."""

    job_id: str
    delivery_id: str
    """Sent as X-ComfyUI-GRPC-Delivery, the same on every attempt."""
    url: str
    state: str = "waiting"
    """waiting (the job is open), pending (due, being tried), delivered, failed."""
    attempts: int = 0
    last_error: str = ""
    due_time: float = 0.0
    """When the job ended; --callback-max-age counts from here."""
    next_attempt_time: float = 0.0
    updated: float = 0.0


_CALLBACK_COLUMNS = (
    "job_id, delivery_id, url, state, attempts, last_error, due_time, next_attempt_time, updated"
)


class JobStore:
    """Interface: the null store keeps nothing."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def track(self, job: Job) -> None:
        """Persist ``job``'s changes from now on (write-behind)."""

    def untrack(self, job: Job) -> None:
        """Stop persisting ``job``'s changes (what is pending is still written)."""

    async def save_now(self, job: Job) -> None:
        """Persist ``job`` before returning."""

    async def forget(self, job_id: str) -> None:
        """Drop a job that never reached ComfyUI."""

    async def unfinished(self) -> list[Job]:
        return []

    async def by_request(self, request_id: str) -> Job | None:
        return None

    async def load(self, job_id: str) -> Job | None:
        return None

    # Completion callbacks: written at once (each write is a delivery's state).

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        """Record ``record`` unless its job has one already; return the one kept."""
        return record

    async def save_callback(self, record: CallbackRecord) -> None:
        """Write ``record`` over its job's callback."""

    async def callback(self, job_id: str) -> CallbackRecord | None:
        return None

    async def open_callbacks(self) -> list[CallbackRecord]:
        """Callbacks waiting for their job to end or still to be delivered."""
        return []


class NullJobStore(JobStore):
    """Keeps callbacks in memory (for the process's life), nothing else."""

    def __init__(self) -> None:
        self._callbacks: dict[str, CallbackRecord] = {}

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        return self._callbacks.setdefault(record.job_id, record)

    async def save_callback(self, record: CallbackRecord) -> None:
        self._callbacks[record.job_id] = record

    async def callback(self, job_id: str) -> CallbackRecord | None:
        return self._callbacks.get(job_id)

    async def open_callbacks(self) -> list[CallbackRecord]:
        return [r for r in self._callbacks.values() if r.state in OPEN_CALLBACK_STATES]


class WriteBehindStore(JobStore):
    """What the SQLite and PostgreSQL stores share: job changes and events are
    buffered as they happen and written in batches by each store's flusher,
    which is woken early by a terminal event or a full buffer."""

    def __init__(self, *, flush_interval_seconds: float, retention_seconds: float) -> None:
        self.flush_interval = flush_interval_seconds
        self.retention = retention_seconds
        self._dirty: dict[str, Job] = {}
        self._events: list[ev.Event] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._wakeup = asyncio.Event()
        # One flush at a time: two batches written at once could commit in
        # the wrong order, an older record of a job over a newer one.
        self._flush_lock = asyncio.Lock()

    def _on_event(self, job: Job, event: ev.Event) -> None:
        self._events.append(event)
        self._dirty[job.job_id] = job
        if event.terminal or len(self._events) > 500:
            self._wakeup.set()

    def track(self, job: Job) -> None:
        job.listener = self._on_event

    def untrack(self, job: Job) -> None:
        if job.listener == self._on_event:
            job.listener = None


class SqliteJobStore(WriteBehindStore):
    def __init__(
        self,
        path: Path,
        *,
        flush_interval_seconds: float = 0.1,
        retention_seconds: float = 7 * 24 * 3600,
    ) -> None:
        super().__init__(
            flush_interval_seconds=flush_interval_seconds, retention_seconds=retention_seconds
        )
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- thread side ---------------------------------------------------------------

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        cutoff = time.time() - self.retention
        stale = [
            row[0]
            for row in db.execute(
                "SELECT job_id FROM jobs WHERE state IN (?, ?, ?) AND updated < ?",
                (*TERMINAL_STATES, cutoff),
            )
        ]
        with db:
            db.executemany("DELETE FROM events WHERE job_id = ?", [(j,) for j in stale])
            db.executemany("DELETE FROM jobs WHERE job_id = ?", [(j,) for j in stale])
            db.execute(
                "DELETE FROM callbacks WHERE state NOT IN (?, ?) AND updated < ?",
                (*OPEN_CALLBACK_STATES, cutoff),
            )
        self._db = db

    def _connection(self) -> sqlite3.Connection:
        """The open connection; callers hold ``_lock``, so ``close`` cannot pull it away."""
        if self._db is None:
            raise sqlite3.ProgrammingError(f"job store {self.path} is closed")
        return self._db

    def _write(
        self, jobs: list[tuple[str, str, str, float, str]], events: list[tuple[str, int, str]]
    ) -> None:
        with self._lock, self._connection() as db:
            db.executemany(
                "INSERT INTO jobs (job_id, request_id, state, updated, record) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, "
                "updated = excluded.updated, record = excluded.record",
                jobs,
            )
            db.executemany(
                "INSERT OR REPLACE INTO events (job_id, sequence, record) VALUES (?, ?, ?)", events
            )

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._connection().execute(sql, args))

    def _close_sync(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _load_sync(self, job_id: str, record: str) -> Job:
        rows = self._query(
            "SELECT sequence, record FROM events WHERE job_id = ? ORDER BY sequence", (job_id,)
        )
        events = [event_from_json(job_id, text) for _, text in rows]
        return job_from_json(job_id, record, events)

    # -- event loop side ----------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._connect)
        self._closing = False
        self._flusher = asyncio.create_task(self._flush_forever(), name="job store flusher")

    async def close(self) -> None:
        """Writes what is pending, then closes the database.

        The flusher is asked to stop rather than cancelled: a write already
        handed to the worker thread cannot be called back, and closing the
        connection under it crashed the process.
        """
        task, self._flusher = self._flusher, None
        if task is not None:
            self._closing = True
            self._wakeup.set()
            await task
        if self._db is not None:
            await self.flush()
            await asyncio.to_thread(self._close_sync)

    async def flush(self) -> None:
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        if self._db is None or (not self._dirty and not self._events):
            return
        now = time.time()
        jobs = [
            (j.job_id, j.spec.request_id, j.state.value, now, job_to_json(j))
            for j in self._dirty.values()
        ]
        events = [(e.job_id, e.sequence, event_to_json(e)) for e in self._events]
        self._dirty, self._events = {}, []
        await asyncio.to_thread(self._write, jobs, events)

    async def _flush_forever(self) -> None:
        while not self._closing:
            await within(self._wakeup.wait(), self.flush_interval)
            self._wakeup.clear()
            try:
                await self.flush()
            except sqlite3.Error:
                log.exception("could not write job records to %s", self.path)

    async def save_now(self, job: Job) -> None:
        self._dirty[job.job_id] = job
        await self.flush()

    async def forget(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._events = [e for e in self._events if e.job_id != job_id]

        def delete() -> None:
            with self._lock, self._connection() as db:
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

        await asyncio.to_thread(delete)

    async def unfinished(self) -> list[Job]:
        def load() -> list[Job]:
            rows = self._query(
                "SELECT job_id, record FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY updated",
                TERMINAL_STATES,
            )
            return [self._load_sync(job_id, record) for job_id, record in rows]

        return await asyncio.to_thread(load)

    async def by_request(self, request_id: str) -> Job | None:
        def load() -> Job | None:
            rows = self._query(
                "SELECT job_id, record FROM jobs WHERE request_id = ?", (request_id,)
            )
            return self._load_sync(*rows[0]) if rows else None

        return await asyncio.to_thread(load)

    async def load(self, job_id: str) -> Job | None:
        def load() -> Job | None:
            rows = self._query("SELECT job_id, record FROM jobs WHERE job_id = ?", (job_id,))
            return self._load_sync(*rows[0]) if rows else None

        return await asyncio.to_thread(load)

    # -- completion callbacks ---------------------------------------------------------

    def _callback_rows(self, sql: str, args: tuple[object, ...]) -> list[CallbackRecord]:
        with self._lock:
            rows = list(self._connection().execute(sql, args))
        names = _CALLBACK_COLUMNS.split(", ")
        return [CallbackRecord(**dict(zip(names, row, strict=True))) for row in rows]

    def _put_callback(self, record: CallbackRecord, verb: str) -> None:
        with self._lock, self._connection() as db:
            db.execute(
                f"INSERT {verb} INTO callbacks ({_CALLBACK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                astuple(record),
            )

    async def add_callback(self, record: CallbackRecord) -> CallbackRecord:
        def add() -> CallbackRecord:
            self._put_callback(record, "OR IGNORE")
            rows = self._callback_rows(
                f"SELECT {_CALLBACK_COLUMNS} FROM callbacks WHERE job_id = ?", (record.job_id,)
            )
            return rows[0] if rows else record

        return await asyncio.to_thread(add)

    async def save_callback(self, record: CallbackRecord) -> None:
        await asyncio.to_thread(self._put_callback, record, "OR REPLACE")

    async def callback(self, job_id: str) -> CallbackRecord | None:
        rows = await asyncio.to_thread(
            self._callback_rows,
            f"SELECT {_CALLBACK_COLUMNS} FROM callbacks WHERE job_id = ?",
            (job_id,),
        )
        return rows[0] if rows else None

    async def open_callbacks(self) -> list[CallbackRecord]:
        return await asyncio.to_thread(
            self._callback_rows,
            f"SELECT {_CALLBACK_COLUMNS} FROM callbacks WHERE state IN (?, ?) "
            "ORDER BY next_attempt_time",
            OPEN_CALLBACK_STATES,
        )


def open_job_store(path: str = "", *, url: str = "", url_file: str = "") -> JobStore:
    """The store the settings name: PostgreSQL for a URL (or a file holding
    one), SQLite for a path, none at all otherwise. Naming two is an error:
    silently preferring one would hide jobs recorded in the other."""
    named = [
        flag
        for flag, value in (
            ("--state-path", path),
            ("--state-url", url),
            ("--state-url-file", url_file),
        )
        if value
    ]
    if len(named) > 1:
        raise ValueError(
            f"{' and '.join(named)} are both set; the job store is one of them: "
            "keep the one to use (unset the flag or its COMFYUI_GRPC_ variable)"
        )
    if url or url_file:
        from .postgres import PostgresJobStore  # the driver loads only when used

        return PostgresJobStore(url, url_file=url_file)
    return SqliteJobStore(Path(path)) if path else NullJobStore()

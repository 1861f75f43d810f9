"""Preview images across replicas, for streams on a replica that does not hold the job.

Previews are not events (:mod:`comfyui_grpc.jobs.previews`): only the
holder's socket receives them, and nothing records them. So a replica
serving a stream with ``include_previews`` for a job held elsewhere says so
in ``preview_watchers``; while a job has such a watcher, its holder copies
the job's newest preview into ``job_previews`` (one row per job, replaced,
at most every :data:`RELAY_SECONDS`) and ``NOTIFY``s; the watching replica
reads the row and publishes it into its own copy of the job, where the
stream's usual preview pacing takes over.

Nothing is written for jobs nobody watches elsewhere, and the tables are
``UNLOGGED``: a preview lost in a database restart is replaced by the next.
A relay that cannot reach the database logs it and drops the image.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..jobs.job import Job
from ..jobs.previews import NodePreview
from ..state.errors import JobStoreUnavailable
from ..state.postgres import PostgresJobStore
from ..state.store import TERMINAL_STATES
from ..tasks import TaskSet

log = logging.getLogger(__name__)

PREVIEWS_CHANNEL = "comfyui_grpc_previews"
"""NOTIFY channel: a job's newest preview is in ``job_previews`` (payload: job id)."""
WATCH_CHANNEL = "comfyui_grpc_preview_watch"
"""NOTIFY channel: a replica streams previews of a job (payload: job id)."""
RELAY_SECONDS = 0.1
"""At most one write of a job's preview per this long (a stream takes at most 10/s)."""
TERMINAL = list(TERMINAL_STATES)


class PreviewRelay:
    """Both ends of the relay: what this replica holds and others watch, and
    what others hold and streams here watch."""

    def __init__(
        self,
        store: PostgresJobStore,
        replica_id: str,
        *,
        held: Callable[[str], Job | None],
        followed: Callable[[str], list[Job]],
        lease_seconds: float,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self._held = held
        self._followed = followed
        self._lease_seconds = lease_seconds
        # The holder's end.
        self._watched: set[str] = set()
        """Jobs some replica streams previews of (held here or not, yet)."""
        self._hooks: dict[str, tuple[Job, Callable[[], None]]] = {}
        """Held jobs watched through the relay -> (the job, stop hearing its previews)."""
        self._to_send: set[str] = set()
        # The watching end.
        self._wanted: dict[str, int] = {}
        """Job -> streams here that want its previews through the relay (their job
        object here is a mirror, not the one this replica may hold)."""
        self._applied: dict[str, int] = {}
        self._to_read: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks = TaskSet("preview relay")

    # -- the watching end --------------------------------------------------------------

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        """While open, the holder of ``job_id`` relays its previews here."""
        count = self._wanted.get(job_id, 0)
        self._wanted[job_id] = count + 1
        try:
            if count == 0:
                await self._say_watching(job_id, True)
                self._to_read.add(job_id)  # the preview already there, at once
                self._wake.set()
            yield
        finally:
            count = self._wanted.pop(job_id) - 1
            if count:
                self._wanted[job_id] = count
            else:
                self._applied.pop(job_id, None)
                if not self._tasks.closed:
                    self._tasks.spawn(self._say_watching(job_id, False), "stop watching")

    async def _say_watching(self, job_id: str, watching: bool) -> None:
        try:
            async with self.store.connection() as conn, conn.transaction():
                if watching:
                    await conn.execute(
                        "INSERT INTO preview_watchers (job_id, replica) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (job_id, self.replica_id),
                    )
                    await conn.execute("SELECT pg_notify(%s, %s)", (WATCH_CHANNEL, job_id))
                else:
                    await conn.execute(
                        "DELETE FROM preview_watchers WHERE job_id = %s AND replica = %s",
                        (job_id, self.replica_id),
                    )
        except JobStoreUnavailable as exc:
            log.warning("could not ask for the previews of job %s: %s", job_id, exc.message)

    def published(self, job_id: str) -> None:
        """``NOTIFY`` on :data:`PREVIEWS_CHANNEL`: read it if a stream here wants it."""
        if job_id in self._wanted:
            self._to_read.add(job_id)
            self._wake.set()

    # -- the holder's end ----------------------------------------------------------------

    def watch_asked(self, job_id: str) -> None:
        """``NOTIFY`` on :data:`WATCH_CHANNEL`: relay the job's previews if held here."""
        self._watched.add(job_id)
        self._hook(job_id)

    def held_now(self, job_ids: list[str]) -> None:
        """This replica just took these jobs (claimed or with a backend)."""
        for job_id in job_ids:
            if job_id in self._watched:
                self._hook(job_id)

    async def refresh(self) -> None:
        """Relay exactly the held jobs watched by live replicas; forget
        watchers that died and previews of ended jobs; say again what this
        replica watches (a stop and a start of watching may have crossed).
        Called at every lease renewal."""
        async with self.store.connection() as conn, conn.transaction():
            if self._wanted:
                await conn.execute(
                    "INSERT INTO preview_watchers (job_id, replica) "
                    "SELECT unnest(%s::text[]), %s ON CONFLICT DO NOTHING",
                    (sorted(self._wanted), self.replica_id),
                )
            await conn.execute(
                "DELETE FROM preview_watchers w WHERE NOT EXISTS (SELECT 1 FROM replicas r "
                "WHERE r.replica_id = w.replica "
                "AND r.heartbeat > now() - make_interval(secs => %s))",
                (self._lease_seconds,),
            )
            await conn.execute(
                "DELETE FROM job_previews p USING jobs j "
                "WHERE j.job_id = p.job_id AND j.state = ANY(%s)",
                (TERMINAL,),
            )
            # This replica's own watchers count too: a stream opened while the
            # job waited in the shared line follows this replica's mirror of it.
            cursor = await conn.execute("SELECT DISTINCT job_id FROM preview_watchers")
            self._watched = {r[0] for r in await cursor.fetchall()}
        for job_id in sorted(set(self._hooks) - self._watched):
            self._unhook(job_id)
        for job_id in sorted(self._watched):
            self._hook(job_id)

    def _hook(self, job_id: str) -> None:
        job = self._held(job_id)
        hooked = self._hooks.get(job_id)
        if hooked is not None and hooked[0] is job:
            return
        self._unhook(job_id)
        if job is None or job.terminal:
            return
        unwatch = job.preview.watch(lambda: self._send(job_id))
        self._hooks[job_id] = (job, unwatch)
        if job.preview.latest is not None:
            self._send(job_id)

    def _unhook(self, job_id: str) -> None:
        hooked = self._hooks.pop(job_id, None)
        if hooked is not None:
            hooked[1]()

    def _send(self, job_id: str) -> None:
        self._to_send.add(job_id)
        self._wake.set()

    # -- both ----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.spawn_supervised(self._run, "relay previews")

    async def close(self) -> None:
        await self._tasks.close()
        for job_id in list(self._hooks):
            self._unhook(job_id)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            to_send, self._to_send = self._to_send, set()
            to_read, self._to_read = self._to_read, set()
            try:
                await self._write(to_send)
                await self._read(to_read)
            except JobStoreUnavailable as exc:
                log.warning("could not relay previews between replicas: %s", exc.message)
            await asyncio.sleep(RELAY_SECONDS)

    async def _write(self, job_ids: set[str]) -> None:
        rows = []
        for job_id in sorted(job_ids):
            hooked = self._hooks.get(job_id)
            preview = None if hooked is None else hooked[0].preview.latest
            if preview is None:
                continue
            rows.append(
                (
                    job_id,
                    preview.node_id,
                    preview.class_type,
                    preview.content_type,
                    preview.image,
                    preview.value,
                    preview.max,
                )
            )
        if not rows:
            return
        async with self.store.connection() as conn, conn.transaction():
            for row in rows:
                await conn.execute(
                    "INSERT INTO job_previews (job_id, node_id, class_type, content_type, image, "
                    "value, max, version) VALUES (%s, %s, %s, %s, %s, %s, %s, 1) "
                    "ON CONFLICT (job_id) DO UPDATE SET node_id = excluded.node_id, "
                    "class_type = excluded.class_type, content_type = excluded.content_type, "
                    "image = excluded.image, value = excluded.value, max = excluded.max, "
                    "version = job_previews.version + 1",
                    row,
                )
                await conn.execute("SELECT pg_notify(%s, %s)", (PREVIEWS_CHANNEL, row[0]))

    async def _read(self, job_ids: set[str]) -> None:
        wanted = sorted(j for j in job_ids if j in self._wanted)
        if not wanted:
            return
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT job_id, version, node_id, class_type, content_type, image, value, max "
                "FROM job_previews WHERE job_id = ANY(%s)",
                (wanted,),
            )
            rows = await cursor.fetchall()
        for job_id, version, node, cls, kind, image, value, maximum in rows:
            if self._applied.get(job_id) == version or job_id not in self._wanted:
                continue
            self._applied[job_id] = version
            preview = NodePreview(node, cls, kind, bytes(image), value, maximum)
            for job in self._followed(job_id):
                if not job.terminal:
                    job.preview.publish(preview)

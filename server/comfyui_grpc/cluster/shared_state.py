"""What gateway replicas share in PostgreSQL beyond job records: the waiting
line, who holds which job, and who owns which ComfyUI backend.

A job is *held* by at most one replica (``jobs.holder``), the only one that
writes its record (:class:`~comfyui_grpc.state.postgres.PostgresJobStore`
fences its writes on it). A waiting job is held by none: it sits in the
shared line (``jobs.waiting``) until a replica with a free backend claims it
with ``FOR UPDATE SKIP LOCKED``, so no job is handed to two replicas. A job
handed to a backend is held by that backend's owner; a replica that takes a
backend over takes its jobs with it.

Backend ownership is a lease (``backend_leases``) renewed by its owner and
taken over once it lapses; times are the database's, so replicas' clocks
do not matter. Replicas say they are alive in ``replicas``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.inventory import Needs
from ..jobs import events as ev
from ..jobs.job import Job
from ..jobs.records import event_from_json, event_to_json, job_from_json, job_to_json
from ..scheduler.shared_line import Choice, WaitingRow, next_tags
from ..state.errors import RequestIdTaken
from ..state.postgres import PostgresJobStore, callback_from_row, with_events
from ..state.store import TERMINAL_STATES, CallbackRecord

QUEUE_CHANNEL = "comfyui_grpc_queue"
"""NOTIFY channel: a job joined the shared line."""
LEASES_CHANNEL = "comfyui_grpc_leases"
"""NOTIFY channel: a replica handed backends over or left (renew and rebalance now)."""
CANCEL_CHANNEL = "comfyui_grpc_cancel"
"""NOTIFY channel: cancel asked for a job another replica holds (payload: job id)."""
TERMINAL = list(TERMINAL_STATES)
CALLBACK_COLUMNS = (
    "c.job_id, c.delivery_id, c.url, c.state, c.attempts, c.last_error, c.due_time, "
    "c.next_attempt_time, c.updated"
)


def needs_to_json(needs: Needs) -> str:
    return json.dumps({"classes": sorted(needs.classes), "choices": sorted(needs.choices)})


def needs_from_json(text: str) -> Needs:
    if not text:
        return Needs(frozenset())  # recorded before replicas: ComfyUI validates
    data = json.loads(text)
    return Needs(frozenset(data["classes"]), frozenset((a, b, c) for a, b, c in data["choices"]))


@dataclass(frozen=True, slots=True)
class LeaseView:
    held: frozenset[str]
    """Backends this replica owns after the renewal."""
    live_replicas: int


class SharedState:
    """The SQL of sharing; one per replica, on the job store's pool."""

    def __init__(self, store: PostgresJobStore, replica_id: str, lease_seconds: float) -> None:
        self.store = store
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds

    # -- the shared line ---------------------------------------------------------

    async def enqueue(
        self, job: Job, needs: Needs, room: Callable[[int, int], None] | None = None
    ) -> int:
        """Record a new job in the shared line with its first event (QUEUED at
        its place, which is returned); raises :class:`RequestIdTaken`.

        ``room(waiting, callers_waiting)`` sees the line as the job would
        join it and may raise to refuse the job (nothing is written then).
        Few round trips: the caller's fair-share row stays locked from the
        first statement to the commit, so this is how long one caller's
        Generates wait for each other.
        """
        spec = job.spec
        async with self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT (SELECT now FROM fair_clock), "
                "(SELECT finish FROM fair_share WHERE caller = %(caller)s FOR UPDATE), "
                "count(*), count(*) FILTER (WHERE caller = %(caller)s) FROM jobs WHERE waiting",
                {"caller": spec.caller},
            )
            row = await cursor.fetchone()
            assert row is not None  # an aggregate always has its row
            clock, last_finish, waiting, mine = row
            if room is not None:
                room(int(waiting), int(mine))
            start, finish = next_tags(
                float(clock or 0.0), None if last_finish is None else float(last_finish)
            )
            cursor = await conn.execute(
                "WITH job AS (INSERT INTO jobs (job_id, request_id, state, updated, record, "
                "holder, waiting, caller, high, fair_tag, needs, backend) "
                "VALUES (%(job_id)s, %(request_id)s, %(state)s, %(updated)s, %(record)s, '', "
                "true, %(caller)s, %(high)s, %(start)s, %(needs)s, '') "
                "ON CONFLICT DO NOTHING RETURNING seq), "
                "share AS (INSERT INTO fair_share (caller, finish) "
                "SELECT %(caller)s, %(finish)s FROM job "
                "ON CONFLICT (caller) DO UPDATE SET finish = excluded.finish) "
                # The statement's snapshot does not hold the new row: it is the one more.
                "SELECT 1 + (SELECT count(*) FROM jobs WHERE waiting AND fair_tag <= %(start)s) "
                "FROM job",
                {
                    "job_id": job.job_id,
                    "request_id": spec.request_id,
                    "state": job.state.value,
                    "updated": time.time(),
                    "record": job_to_json(job),
                    "caller": spec.caller,
                    "high": spec.front,
                    "start": start,
                    "finish": finish,
                    "needs": needs_to_json(needs),
                },
            )
            inserted = await cursor.fetchone()
            if inserted is None:
                taken = await conn.execute(
                    "SELECT job_id FROM jobs WHERE request_id = %s", (spec.request_id,)
                )
                owner = await taken.fetchone()
                raise RequestIdTaken(spec.request_id, job.job_id if owner is None else owner[0])
            position = int(inserted[0])
            job.queued(position, "")
            first = next(iter(job.log))
            await conn.execute(
                "WITH event AS (INSERT INTO events (job_id, sequence, record) "
                "VALUES (%s, %s, %s)) SELECT pg_notify(%s, %s)",
                (first.job_id, first.sequence, event_to_json(first), QUEUE_CHANNEL, job.job_id),
            )
        return position

    async def claim(self, choose: Any, window: int = 64) -> tuple[Choice, list[Job]]:
        """Take jobs off the front of the shared line for this replica's free
        backends: ``choose(rows) -> Choice`` picks among the first ``window``
        (rows other replicas are claiming are skipped, not waited for)."""
        async with self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT job_id, caller, fair_tag, high, seq, needs FROM jobs WHERE waiting "
                "ORDER BY fair_tag, seq LIMIT %s FOR UPDATE SKIP LOCKED",
                (window,),
            )
            found = await cursor.fetchall()
            # High-priority jobs take their caller's turn wherever they wait.
            cursor = await conn.execute(
                "SELECT job_id, caller, fair_tag, high, seq, needs FROM jobs WHERE waiting "
                "AND high ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
                (window,),
            )
            found += [r for r in await cursor.fetchall() if r[0] not in {f[0] for f in found}]
            rows = [
                WaitingRow(r[0], r[1], float(r[2]), bool(r[3]), int(r[4]), needs_from_json(r[5]))
                for r in found
            ]
            choice: Choice = choose(rows)
            if not choice.picks:
                return choice, []
            ids = [p.job_id for p in choice.picks]
            for job_id, tag in choice.retags:
                await conn.execute("UPDATE jobs SET fair_tag = %s WHERE job_id = %s", (tag, job_id))
            await conn.execute(
                "UPDATE jobs SET waiting = false, holder = %s WHERE job_id = ANY(%s)",
                (self.replica_id, ids),
            )
            await conn.execute(
                "UPDATE fair_clock SET now = GREATEST(now, %s)",
                (max(p.tag for p in choice.picks),),
            )
            jobs = await self._load(conn, ids, gap=False)
        order = {job_id: i for i, job_id in enumerate(ids)}
        return choice, sorted(jobs, key=lambda j: order[j.job_id])

    async def give_back(self, job_ids: Sequence[str]) -> None:
        """Jobs this replica holds (written already) go back to the shared line."""
        if not job_ids:
            return
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE jobs SET waiting = true, holder = '', backend = '' "
                "WHERE job_id = ANY(%s) AND holder = %s AND NOT (state = ANY(%s))",
                (list(job_ids), self.replica_id, TERMINAL),
            )
            await conn.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))

    async def waiting_by_caller(self) -> dict[str, int]:
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT caller, count(*) FROM jobs WHERE waiting GROUP BY caller"
            )
            return {r[0]: int(r[1]) for r in await cursor.fetchall()}

    # -- cancel --------------------------------------------------------------------

    async def take_to_cancel(self, job_id: str) -> Job | None:
        """Take a job out of the shared line to cancel it (None: not waiting there)."""
        async with self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE jobs SET waiting = false, holder = %s WHERE job_id = %s AND waiting "
                "RETURNING job_id",
                (self.replica_id, job_id),
            )
            if await cursor.fetchone() is None:
                return None
            found = await self._load(conn, [job_id], gap=False)
        return found[0] if found else None

    async def ask_cancel(self, job_id: str) -> None:
        """Tell the job's holder (now, or whoever holds it next) to cancel it."""
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE jobs SET cancel_requested = true WHERE job_id = %s", (job_id,)
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, job_id))

    async def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT job_id FROM jobs WHERE job_id = ANY(%s) AND cancel_requested",
                (list(job_ids),),
            )
            return {r[0] for r in await cursor.fetchall()}

    # -- following jobs held elsewhere ---------------------------------------------

    async def news(self, job_id: str, after_sequence: int) -> tuple[str, list[ev.Event]] | None:
        """The job's record (JSON) and its events after ``after_sequence``.

        One statement, so one snapshot: a record read apart from its events
        could be older than them (the holder committed in between), and a
        job rebuilt from both would hold its terminal event but not its end.
        """
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT j.record, ARRAY(SELECT e.record FROM events e WHERE e.job_id = j.job_id "
                "AND e.sequence > %s ORDER BY e.sequence) FROM jobs j WHERE j.job_id = %s",
                (after_sequence, job_id),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return str(row[0]), [event_from_json(job_id, text) for text in row[1]]

    async def news_many(self, after: dict[str, int]) -> dict[str, tuple[Job, list[ev.Event]]]:
        """For each job with new events, its record and its events after the
        given sequence: one statement (one snapshot, see :meth:`news`), and
        jobs without new events (most, when polling) cost no record read."""
        ids, sequences = list(after), [after[j] for j in after]
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT w.job_id, j.record, e.records "
                "FROM unnest(%s::text[], %s::bigint[]) AS w(job_id, after) "
                "CROSS JOIN LATERAL (SELECT array_agg(e.record ORDER BY e.sequence) AS records "
                "FROM events e WHERE e.job_id = w.job_id AND e.sequence > w.after) e "
                "JOIN jobs j ON j.job_id = w.job_id WHERE e.records IS NOT NULL",
                (ids, sequences),
            )
            rows = await cursor.fetchall()
        return {
            job_id: (
                job_from_json(job_id, record, [], sequence_gap=False),
                [event_from_json(job_id, text) for text in texts],
            )
            for job_id, record, texts in rows
        }

    async def listed(self, states: list[str], max_finished: int) -> list[Job]:
        """Jobs in ``states`` (all when empty): every open one, and the
        ``max_finished`` that ended last (records only, no events)."""
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "(SELECT job_id, record FROM jobs WHERE NOT (state = ANY(%(ended)s)) "
                "AND (cardinality(%(states)s::text[]) = 0 OR state = ANY(%(states)s))) "
                "UNION ALL (SELECT job_id, record FROM jobs WHERE state = ANY(%(ended)s) "
                "AND (cardinality(%(states)s::text[]) = 0 OR state = ANY(%(states)s)) "
                "ORDER BY updated DESC LIMIT %(limit)s)",
                {"ended": TERMINAL, "states": states, "limit": max_finished},
            )
            rows = await cursor.fetchall()
        return [job_from_json(job_id, record, [], sequence_gap=False) for job_id, record in rows]

    # -- replicas and backend leases -------------------------------------------------

    async def start(self) -> None:
        """Say this replica is alive; put back in the line what an earlier
        life of it had claimed but not handed to a backend."""
        async with self.store.connection() as conn, conn.transaction():
            await self._beat(conn)
            await conn.execute(
                "UPDATE jobs SET waiting = true, holder = '' WHERE holder = %s AND backend = '' "
                "AND NOT waiting AND state = 'queued'",
                (self.replica_id,),
            )

    async def _beat(self, conn: Any) -> None:
        await conn.execute(
            "INSERT INTO replicas (replica_id, heartbeat) VALUES (%s, now()) "
            "ON CONFLICT (replica_id) DO UPDATE SET heartbeat = now()",
            (self.replica_id,),
        )

    async def renew(self, backends: Sequence[str]) -> LeaseView:
        """Heartbeat and renew this replica's leases; count live replicas;
        put back in the line jobs claimed by replicas that died before
        handing them to a backend."""
        ttl = self.lease_seconds
        async with self.store.connection() as conn, conn.transaction():
            await self._beat(conn)
            cursor = await conn.execute(
                "UPDATE backend_leases SET expires = now() + make_interval(secs => %s) "
                "WHERE owner = %s AND backend = ANY(%s) RETURNING backend",
                (ttl, self.replica_id, list(backends)),
            )
            held = frozenset(r[0] for r in await cursor.fetchall())
            await conn.execute("DELETE FROM replicas WHERE heartbeat < now() - interval '1 day'")
            cursor = await conn.execute(
                "SELECT count(*) FROM replicas WHERE heartbeat > now() - make_interval(secs => %s)",
                (ttl,),
            )
            row = await cursor.fetchone()
            cursor = await conn.execute(
                "UPDATE jobs SET waiting = true, holder = '' WHERE holder <> '' AND backend = '' "
                "AND NOT waiting AND state = 'queued' AND holder NOT IN (SELECT replica_id "
                "FROM replicas WHERE heartbeat > now() - make_interval(secs => %s)) "
                "RETURNING job_id",
                (ttl,),
            )
            if await cursor.fetchall():
                await conn.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))
        return LeaseView(held, max(1, int(row[0]) if row else 1))

    async def acquire(self, backend: str) -> list[Job] | None:
        """Own ``backend`` if no live lease names another replica; then hold
        its open jobs (returned, to reconcile) - None when not acquired."""
        ttl = self.lease_seconds
        async with self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO backend_leases (backend, owner, expires) "
                "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (backend) DO UPDATE SET owner = excluded.owner, "
                "expires = excluded.expires, takeovers = backend_leases.takeovers + 1 "
                "WHERE backend_leases.expires <= now() OR backend_leases.owner = excluded.owner "
                "RETURNING backend",
                (backend, self.replica_id, ttl),
            )
            if await cursor.fetchone() is None:
                return None
            cursor = await conn.execute(
                "UPDATE jobs SET holder = %s, waiting = false WHERE backend = %s "
                "AND NOT (state = ANY(%s)) RETURNING job_id",
                (self.replica_id, backend, TERMINAL),
            )
            ids = [r[0] for r in await cursor.fetchall()]
            return await self._load(conn, ids, gap=True)

    async def release(self, backends: Sequence[str]) -> None:
        """Give up leases at once (their jobs are written already): another
        replica takes the backends over without waiting for them to lapse."""
        if not backends:
            return
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE backend_leases SET owner = '', expires = now() - interval '1 second' "
                "WHERE owner = %s AND backend = ANY(%s)",
                (self.replica_id, list(backends)),
            )
            await conn.execute("SELECT pg_notify(%s, '')", (LEASES_CHANNEL,))

    async def owe(self, backend: str, job_ids: set[str]) -> None:
        """Record the prompts ``backend`` may still hold for jobs moved off it
        (deleted there when it answers again, by whichever replica owns it)."""
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM owed_deletes WHERE backend = %s AND NOT (job_id = ANY(%s))",
                (backend, sorted(job_ids)),
            )
            if job_ids:
                await conn.execute(
                    "INSERT INTO owed_deletes (backend, job_id) "
                    "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                    (backend, sorted(job_ids)),
                )

    async def owed(self, backend: str) -> set[str]:
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT job_id FROM owed_deletes WHERE backend = %s", (backend,)
            )
            return {r[0] for r in await cursor.fetchall()}

    async def leave(self) -> None:
        """This replica stops: others stop counting it."""
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM replicas WHERE replica_id = %s", (self.replica_id,))
            await conn.execute("SELECT pg_notify(%s, '')", (LEASES_CHANNEL,))

    async def owners(self) -> dict[str, str]:
        """Backend -> owning replica, for live leases."""
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT backend, owner FROM backend_leases WHERE expires > now()"
            )
            return {r[0]: r[1] for r in await cursor.fetchall()}

    # -- completion callbacks ------------------------------------------------------------

    async def callback_due(self, job_id: str, now: float) -> CallbackRecord | None:
        async with self.store.connection() as conn:
            cursor = await conn.execute(
                "UPDATE callbacks c SET state = 'pending', due_time = %s, next_attempt_time = %s, "
                "updated = %s, holder = %s WHERE c.job_id = %s AND c.state = 'waiting' "
                f"RETURNING {CALLBACK_COLUMNS}",
                (now, now, now, self.replica_id, job_id),
            )
            row = await cursor.fetchone()
        return None if row is None else callback_from_row(row)

    async def claim_callbacks(self, now: float) -> list[CallbackRecord]:
        async with self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE callbacks c SET holder = %(me)s, state = 'pending', "
                "due_time = CASE WHEN c.state = 'waiting' THEN %(now)s ELSE c.due_time END, "
                "next_attempt_time = CASE WHEN c.state = 'waiting' THEN %(now)s "
                "ELSE c.next_attempt_time END "
                "WHERE c.job_id IN (SELECT o.job_id FROM callbacks o JOIN jobs j "
                "ON j.job_id = o.job_id WHERE (o.state = 'pending' OR (o.state = 'waiting' "
                "AND j.state = ANY(%(ended)s))) AND (o.holder = %(me)s OR o.holder NOT IN "
                "(SELECT replica_id FROM replicas WHERE heartbeat > now() - "
                "make_interval(secs => %(ttl)s))) FOR UPDATE OF o SKIP LOCKED) "
                f"RETURNING {CALLBACK_COLUMNS}",
                {"me": self.replica_id, "now": now, "ended": TERMINAL, "ttl": self.lease_seconds},
            )
            return [callback_from_row(row) for row in await cursor.fetchall()]

    # -- internals -------------------------------------------------------------------

    async def _load(self, conn: Any, ids: list[str], *, gap: bool) -> list[Job]:
        """The jobs ``ids`` with their events; ``gap`` when a replica that may
        have died held them (events it had not written yet may have been seen:
        new ones start past a gap)."""
        if not ids:
            return []
        cursor = await conn.execute(
            "SELECT job_id, record, cancel_requested FROM jobs WHERE job_id = ANY(%s)", (ids,)
        )
        rows = await cursor.fetchall()
        jobs = await with_events(conn, rows, sequence_gap=gap)
        cancel = {row[0] for row in rows if row[2]}
        for job in jobs:
            job.cancel_requested = job.cancel_requested or job.job_id in cancel
        return jobs

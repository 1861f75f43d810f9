"""What only a shared PostgreSQL job store promises: several gateways start
on one database at once, a request_id is one job across all of them, and
credentials reach the server but never a log line or an error."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.model import JobKind, JobState
from comfyui_grpc.state import JobStoreUnavailable, RequestIdTaken
from comfyui_grpc.state.postgres import EVENTS_CHANNEL, MIGRATIONS, PostgresJobStore
from comfyui_grpc.workflows import TextToImageParams, text_to_image_graph
from support.postgres import PASSWORD, PostgresServer

FIRST = "00000000-0000-4000-8000-000000000001"
SECOND = "00000000-0000-4000-8000-000000000002"


def _job(job_id: str, request_id: str = "") -> Job:
    graph = text_to_image_graph(job_id, TextToImageParams(prompt="a cat", steps=3))
    spec = JobSpec(
        kind=JobKind.TEXT_TO_IMAGE, workflow=graph, workflow_sha256="abc", request_id=request_id
    )
    return Job(job_id, spec)


async def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(query.encode())
        return await cursor.fetchall() if cursor.description else []


async def test_gateways_starting_together_migrate_an_empty_database_once(
    postgres_url: str,
) -> None:
    stores = [PostgresJobStore(postgres_url) for _ in range(4)]
    try:
        opened = await asyncio.gather(*(store.open() for store in stores), return_exceptions=True)
        assert opened == [None] * len(stores)
        rows = await _rows(postgres_url, "SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in rows] == [step.version for step in MIGRATIONS]
        job = _job(FIRST, "r")
        stores[0].track(job)
        await stores[0].save_now(job)
        loaded = await stores[3].by_request("r")
        assert loaded is not None
        assert loaded.job_id == FIRST
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_request_id_is_one_job_across_two_gateways(postgres_url: str) -> None:
    one, two = PostgresJobStore(postgres_url), PostgresJobStore(postgres_url)
    await one.open()
    await two.open()
    try:
        first = _job(FIRST, "shared")
        one.track(first)
        await one.save_now(first)

        second, bystander = _job(SECOND, "shared"), _job(SECOND.replace("2", "3"), "other")
        two.track(bystander)
        two.track(second)
        bystander.started()  # pending in two's batch when the refused job is written
        with pytest.raises(RequestIdTaken) as refused:
            await two.save_now(second)
        assert refused.value.job_id == FIRST
        assert "retry" in refused.value.message

        assert await two.load(SECOND) is None
        found = await two.by_request("shared")
        assert found is not None
        assert found.job_id == FIRST
        # The refusal cost nothing else in the same batch.
        written = await one.load(bystander.job_id)
        assert written is not None
        assert written.state is JobState.RUNNING
        # A refused job leaves no events behind, even if it emits some.
        second.started()
        await two.close()
        assert await _rows(postgres_url, f"SELECT 1 FROM events WHERE job_id = '{SECOND}'") == []
    finally:
        await one.close()
        await two.close()


async def test_two_gateways_racing_for_a_request_id_record_one_job(postgres_url: str) -> None:
    one, two = PostgresJobStore(postgres_url), PostgresJobStore(postgres_url)
    await asyncio.gather(one.open(), two.open())
    try:
        jobs = [_job(FIRST, "race"), _job(SECOND, "race")]
        one.track(jobs[0])
        two.track(jobs[1])
        outcomes = await asyncio.gather(
            one.save_now(jobs[0]), two.save_now(jobs[1]), return_exceptions=True
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "RequestIdTaken"]
        winner = jobs[outcomes.index(None)].job_id
        loser = next(o for o in outcomes if isinstance(o, RequestIdTaken))
        assert loser.job_id == winner
        assert await _rows(postgres_url, "SELECT job_id FROM jobs") == [(winner,)]
    finally:
        await asyncio.gather(one.close(), two.close())


async def test_a_batch_the_database_refused_is_written_at_the_next_flush(
    postgres_url: str,
) -> None:
    store = PostgresJobStore(postgres_url, flush_interval_seconds=3600)
    await store.open()
    try:
        job = _job(FIRST)
        store.track(job)
        await store.save_now(job)
        await _rows(postgres_url, "ALTER TABLE events RENAME TO events_away")
        job.started()
        job.node_progress("5", 1, 3)
        with pytest.raises(psycopg.errors.UndefinedTable):
            await store.flush()
        await _rows(postgres_url, "ALTER TABLE events_away RENAME TO events")
        job.node_progress("5", 2, 3)
        assert await store.flush() == set()
        loaded = await store.load(FIRST)
        assert loaded is not None
        assert [e.sequence for e in loaded.log] == [e.sequence for e in job.log]
    finally:
        await store.close()


async def test_a_replica_writes_news_at_once_and_still_spaces_its_writes(
    postgres_url: str,
) -> None:
    """Other replicas' streams follow a replica's writes: a step after a quiet
    spell is written (and announced) at once, not when the interval runs
    out; the interval still keeps one write at most per interval."""
    job = _job(FIRST)
    recorder = PostgresJobStore(postgres_url)
    await recorder.open()
    await recorder.save_now(job)
    await recorder.close()
    await _rows(postgres_url, "UPDATE jobs SET holder = 'replica-1'")
    interval = 1.0
    store = PostgresJobStore(postgres_url, flush_interval_seconds=interval)
    store.holder = "replica-1"
    await store.open()
    try:
        store.track(job)
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(f'LISTEN "{EVENTS_CHANNEL}"'.encode())
            notes = conn.notifies(timeout=3 * interval)
            try:
                # A quiet spell of a few intervals, the flusher's timer running meanwhile.
                await asyncio.sleep(2.5 * interval)
                loop = asyncio.get_running_loop()
                quiet_since = loop.time()
                job.started()
                first = await anext(notes)
                assert json.loads(first.payload)["job"] == FIRST
                assert loop.time() - quiet_since < interval / 4
                job.node_progress("5", 1, 3)
                await anext(notes)
                # That write began no earlier than an interval after the first one.
                assert loop.time() - quiet_since >= interval
            finally:
                await notes.aclose()
        loaded = await store.load(FIRST)
        assert loaded is not None
        assert [e.sequence for e in loaded.log] == [e.sequence for e in job.log]
    finally:
        await store.close()


async def test_connections_the_database_dropped_are_replaced(postgres_url: str) -> None:
    store = PostgresJobStore(postgres_url)
    await store.open()
    try:
        job = _job(FIRST)
        store.track(job)
        await store.save_now(job)
        dropped = await _rows(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert dropped, "the store held no connection"
        loaded = await store.load(FIRST)
        assert loaded is not None
    finally:
        await store.close()


async def test_the_url_may_leave_the_password_to_libpq_or_a_file(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_server.create_database()
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    from_env = PostgresJobStore(postgres_server.url(database, password=False))
    await from_env.open()
    await from_env.close()
    monkeypatch.delenv("PGPASSWORD")

    url_file = tmp_path / "state-url"
    url_file.write_text(postgres_server.url(database) + "\n")
    from_file = PostgresJobStore(url_file=str(url_file))
    assert PASSWORD not in repr(from_file)
    await from_file.open()
    try:
        job = _job(FIRST)
        from_file.track(job)
        await from_file.save_now(job)
        assert await from_file.load(FIRST) is not None
    finally:
        await from_file.close()


async def test_a_refused_login_says_why_without_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-" + PASSWORD
    url = postgres_server.url(postgres_server.create_database()).replace(PASSWORD, wrong)
    store = PostgresJobStore(url, connect_timeout_seconds=5)
    with caplog.at_level(logging.DEBUG), pytest.raises(JobStoreUnavailable) as refused:
        await store.open()
    message = refused.value.message
    assert "password authentication failed" in message
    assert f"127.0.0.1:{postgres_server.port}" in message
    assert wrong not in message
    assert wrong not in caplog.text


async def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from support.net import free_port

    port = free_port()
    url = f"postgresql://gw:secret-pw@127.0.0.1:{port}/jobs"
    with pytest.raises(JobStoreUnavailable) as refused:
        await PostgresJobStore(url, connect_timeout_seconds=2).open()
    assert "secret-pw" not in refused.value.message
    assert f"(postgresql://127.0.0.1:{port}/jobs) cannot be used" in refused.value.message
    assert "Connection refused" in refused.value.message
    missing = tmp_path / "nothing-here"
    with pytest.raises(JobStoreUnavailable, match="cannot be read"):
        await PostgresJobStore(url_file=str(missing)).open()


async def test_writes_made_while_the_database_is_down_land_when_it_is_back(
    postgres_server: PostgresServer,
) -> None:
    """A server of its own, stopped and started again under a running store."""
    server = PostgresServer(postgres_server.bindir)
    await asyncio.to_thread(server.start)
    store: PostgresJobStore | None = None
    try:
        store = PostgresJobStore(
            server.url(server.create_database()),
            flush_interval_seconds=3600,
            connect_timeout_seconds=1,
        )
        await store.open()
        job = _job(FIRST, "kept")
        store.track(job)
        await store.save_now(job)
        await asyncio.to_thread(server.stop, keep=True)

        job.started()
        job.node_progress("5", 1, 3)
        with pytest.raises(JobStoreUnavailable) as down:
            await store.flush()
        assert PASSWORD not in down.value.message
        refused = _job(SECOND, "never")
        store.track(refused)
        with pytest.raises(JobStoreUnavailable):
            await store.save_now(refused)  # Generate answers UNAVAILABLE: the job is dropped

        await asyncio.to_thread(server.start)
        for _ in range(30):  # the pool reconnects with a back-off of its own
            try:
                await store.flush()
                break
            except JobStoreUnavailable:
                continue
        loaded = await store.load(FIRST)
        assert loaded is not None
        assert [e.sequence for e in loaded.log] == [e.sequence for e in job.log]
        assert await store.load(SECOND) is None
        assert await store.by_request("never") is None
    finally:
        if store is not None:
            await store.close()
        await asyncio.to_thread(server.stop)


def hold_first_write(store: PostgresJobStore) -> tuple[asyncio.Event, asyncio.Event]:
    """The store's next batch, once taken, waits to be written until the
    second event is set; the first is set when it is taken."""
    real_write = store._write
    taken, release = asyncio.Event(), asyncio.Event()

    async def write(*args: Any) -> set[str]:
        if not taken.is_set():
            taken.set()
            await release.wait()
        return await real_write(*args)

    store._write = write  # type: ignore[method-assign]
    return taken, release


async def test_a_batch_writes_each_record_as_of_its_events(postgres_url: str) -> None:
    """A record serialised after the batch's events were taken could be newer
    than them: a replica following the job would rebuild it ended without its
    terminal event. A change made while a batch is written goes in the next."""
    store = PostgresJobStore(postgres_url, flush_interval_seconds=3600)
    await store.open()
    try:
        job = _job(FIRST)
        store.track(job)
        await store.save_now(job)
        taken, release = hold_first_write(store)  # waits for a connection, say
        job.queued(3, "")
        first = asyncio.create_task(store.flush())
        await taken.wait()
        job.started()  # after the batch was taken
        release.set()
        await first
        [(state, record)] = await _rows(
            postgres_url, f"SELECT state, record FROM jobs WHERE job_id = '{FIRST}'"
        )
        events = await _rows(
            postgres_url,
            f"SELECT record FROM events WHERE job_id = '{FIRST}' ORDER BY sequence",
        )
        assert state == JobState.QUEUED.value
        assert json.loads(record)["state"] == JobState.QUEUED.value
        assert json.loads(events[-1][0])["state"] == JobState.QUEUED.value
    finally:
        await store.close()


async def test_flushes_land_in_order_a_later_record_is_never_overwritten(
    postgres_url: str,
) -> None:
    """The flusher and a save_now (or a replica's hand-over) flush at once: the
    batch taken later must not be overwritten by the one taken first."""
    store = PostgresJobStore(postgres_url, flush_interval_seconds=3600)
    await store.open()
    try:
        job = _job(FIRST)
        store.track(job)
        await store.save_now(job)
        first_started, release = hold_first_write(store)  # the first batch is slow to commit
        job.queued(3, "")
        first = asyncio.create_task(store.flush())
        await first_started.wait()
        job.started()
        second = asyncio.create_task(store.flush())
        # Unordered, the second batch would commit now, before the first.
        done, _ = await asyncio.wait({second}, timeout=0.5)
        assert not done
        release.set()
        await asyncio.gather(first, second)
        rows = await _rows(postgres_url, f"SELECT state FROM jobs WHERE job_id = '{FIRST}'")
        assert rows == [(JobState.RUNNING.value,)]
    finally:
        await store.close()


async def test_jobs_recorded_before_replicas_join_the_shared_line_or_their_backend(
    postgres_url: str,
) -> None:
    """A database written by a gateway from before replicas (schema version 2):
    its waiting jobs join the shared line, the others stay with their backend."""
    from comfyui_grpc.jobs.records import job_to_json
    from comfyui_grpc.state.postgres import migrate

    waiting, handed = _job(FIRST), _job(SECOND)
    waiting.queued(1, "")
    handed.backend = "http://gpu-1:8188"
    handed.queued(1, handed.backend)
    handed.started()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn, MIGRATIONS[:2])
        for job in (waiting, handed):
            await conn.execute(
                "INSERT INTO jobs (job_id, request_id, state, updated, record) "
                "VALUES (%s, '', %s, 0, %s)",
                (job.job_id, job.state.value, job_to_json(job)),
            )
    store = PostgresJobStore(postgres_url)
    await store.open()
    await store.close()
    rows = await _rows(
        postgres_url, "SELECT job_id, waiting, backend, caller FROM jobs ORDER BY job_id"
    )
    assert rows == [
        (FIRST, True, "", "anonymous"),
        (SECOND, False, "http://gpu-1:8188", "anonymous"),
    ]

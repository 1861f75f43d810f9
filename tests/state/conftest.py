"""Job store fixtures: the same contract tests run against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from comfyui_grpc.state import JobStore, SqliteJobStore

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A new, unopened store on the test's one database (call it again to "restart")."""
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def sqlite(**kwargs: Any) -> JobStore:
            return SqliteJobStore(path, **kwargs)

        return sqlite
    from comfyui_grpc.state.postgres import PostgresJobStore

    url: str = request.getfixturevalue("postgres_url")

    def postgres(**kwargs: Any) -> JobStore:
        return PostgresJobStore(url, **kwargs)

    return postgres


@pytest.fixture
async def job_store(make_store: StoreFactory) -> AsyncIterator[JobStore]:
    store = make_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()

"""Durable job records, so a gateway restart loses no job: SQLite for one
gateway, PostgreSQL (:mod:`.postgres`) for several sharing one database."""

from .errors import JobStoreUnavailable, RequestIdTaken
from .store import CallbackRecord, JobStore, NullJobStore, SqliteJobStore, open_job_store

__all__ = [
    "CallbackRecord",
    "JobStore",
    "JobStoreUnavailable",
    "NullJobStore",
    "RequestIdTaken",
    "SqliteJobStore",
    "open_job_store",
]

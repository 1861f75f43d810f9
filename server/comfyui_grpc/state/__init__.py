"""Durable job records, so a gateway restart loses no job."""

from .store import JobStore, NullJobStore, SqliteJobStore, open_job_store

__all__ = ["JobStore", "NullJobStore", "SqliteJobStore", "open_job_store"]

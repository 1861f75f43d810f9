"""Durable job records, so a gateway restart loses no job."""

from .store import CallbackRecord, JobStore, NullJobStore, SqliteJobStore, open_job_store

__all__ = ["CallbackRecord", "JobStore", "NullJobStore", "SqliteJobStore", "open_job_store"]

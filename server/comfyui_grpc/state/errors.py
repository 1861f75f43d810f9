"""What a job store tells its callers when it cannot do what was asked.

Both are :class:`~comfyui_grpc.errors.Unavailable`: a caller that retries
gets a proper answer (the store back, or the job recorded under its
``request_id``), so the API layer maps them like any other outage.
"""

from __future__ import annotations

from ..errors import Unavailable


class JobStoreUnavailable(Unavailable):
    """The database cannot be reached (or refused the credentials)."""

    reason = "JOB_STORE_UNAVAILABLE"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_seconds=1.0)


class RequestIdTaken(Unavailable):
    """Another job, recorded by another gateway sharing the database at the
    same moment, holds this ``request_id``; a retry finds that job."""

    reason = "REQUEST_ID_TAKEN"

    def __init__(self, request_id: str, job_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was recorded for another job by another gateway "
            f"at the same moment (job {job_id} was not recorded); retry to get that job",
            retry_after_seconds=0.1,
        )
        self.request_id = request_id
        self.job_id = job_id


class JobMovedAway(Unavailable):
    """Another gateway replica holds the job now (it took over the job's
    backend): this one must neither write the job nor hand it to ComfyUI."""

    reason = "JOB_MOVED"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id} is now held by another gateway replica; retry to reach it",
            retry_after_seconds=0.1,
        )
        self.job_id = job_id

"""The job as GetResult returns it, shared by GetResult and completion callbacks
(a callback's body is exactly what GetResult would have answered)."""

from __future__ import annotations

import time

from google.protobuf import json_format

from ..jobs.service import JobService
from ..storage import ArtifactStore
from ..v1 import job_pb2
from . import convert

CALLBACK_PRESIGN_SECONDS = 24 * 3600
"""Presigned URLs in a callback's body work this long (when the store presigns)."""


async def add_presigned_urls(message: job_pb2.Job, store: ArtifactStore, ttl: int) -> None:
    """Give each artifact a GET URL valid ``ttl`` seconds, if the store makes them."""
    expires = convert.timestamp(time.time() + ttl)
    assert expires is not None
    for item in message.artifacts:
        url = await store.presign_get(item.key, ttl)
        if url:
            item.presigned_url = url
            item.presigned_url_expire_time.CopyFrom(expires)


async def callback_body(service: JobService, job_id: str, attempt: int, last_error: str) -> bytes:
    """The body of a job's callback: its GetResult job as protobuf JSON.

    The delivery fields say where this delivery stands as it is sent
    (PENDING, this attempt's number, the previous attempt's error).
    Raises NotFound when the job is gone.
    """
    job = await service.find(job_id)
    message = convert.job(job)
    await add_presigned_urls(message, service.store, CALLBACK_PRESIGN_SECONDS)
    message.callback_state = job_pb2.CALLBACK_STATE_PENDING
    message.callback_attempts = attempt
    message.callback_last_error = last_error
    return json_format.MessageToJson(message, indent=None).encode()

"""Sorting S3 failures into retry-worthy, missing-object and permanent ones.

Outages, 5xx answers and throttling pass with time; a wrong key, a missing
bucket or a refused signature do not, and retrying them would only delay a
clear error by the whole back-off schedule.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import aiohttp
from botocore import exceptions as boto

RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "BandwidthLimitExceeded",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
CREDENTIAL_ERRORS = (boto.NoCredentialsError, boto.PartialCredentialsError)


class Failure(enum.Enum):
    TRANSIENT = "transient"
    NOT_FOUND = "not found"
    PERMANENT = "permanent"
    FOREIGN = "foreign"
    """Not an S3 failure at all: a bug, or an error from the caller's data."""


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ``ClientError`` (``""`` for anything else)."""
    if isinstance(exc, boto.ClientError):
        return str(_error(exc).get("Code", ""))
    return ""


def _error(exc: boto.ClientError) -> dict[str, Any]:
    error = exc.response.get("Error", {})
    return error if isinstance(error, dict) else {}


def _status(exc: boto.ClientError) -> int:
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode", 0) if isinstance(meta, dict) else 0
    return status if isinstance(status, int) else 0


def classify(exc: BaseException) -> Failure:
    """Decides what a failed S3 call means."""
    if isinstance(exc, boto.ClientError):
        code = error_code(exc)
        status = _status(exc)
        if code in RETRYABLE_CODES or status >= 500 or status in (408, 429):
            return Failure.TRANSIENT
        if code in NOT_FOUND_CODES:
            return Failure.NOT_FOUND
        return Failure.PERMANENT
    if isinstance(exc, CREDENTIAL_ERRORS):
        return Failure.PERMANENT
    if isinstance(
        exc,
        boto.HTTPClientError  # closed connections, read timeouts, broken bodies
        | boto.ConnectionError  # refused connections, connect timeouts, DNS
        | boto.IncompleteReadError
        | aiohttp.ClientError
        | asyncio.TimeoutError
        | ConnectionError,
    ):
        return Failure.TRANSIENT
    if isinstance(exc, boto.BotoCoreError):
        return Failure.PERMANENT
    return Failure.FOREIGN


def explain(exc: BaseException) -> str:
    """A short human reason for a failure, naming the S3 code when there is one."""
    if isinstance(exc, boto.ClientError):
        error = _error(exc)
        code = error.get("Code", "")
        message = error.get("Message", "")
        return f"{code}: {message}" if message else str(code or exc)
    if isinstance(exc, CREDENTIAL_ERRORS):
        return (
            "no usable S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or provide a credentials file"
        )
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

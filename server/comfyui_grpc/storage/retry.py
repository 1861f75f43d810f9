"""Retrying transient failures with capped exponential back-off and jitter.

Jitter keeps many uploads that failed together from hammering a recovering
store in lock-step; the cap bounds how long one outage can stall a job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import StorageError, StorageUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry one request."""

    max_attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds < 0 or self.max_seconds < self.base_seconds:
            raise ValueError("need 0 <= backoff base <= backoff max")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures ("equal jitter").

        At least half the capped exponential step, so the total wait before
        giving up is predictable to within a factor of two.
        """
        step = min(self.max_seconds, self.base_seconds * 2.0 ** (failed_attempts - 1))
        return step / 2 + random.uniform(0, step / 2)


Classifier = Callable[[Exception], StorageError | None]
"""Maps a failure to the error to raise at once, or None if it is worth retrying.

A classifier may also re-raise the exception itself when it is not a storage
problem at all (a bug, or an error from the caller's data source).
"""


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    classify: Classifier,
) -> T:
    """Awaits ``call()`` until it succeeds, a failure is permanent, or attempts run out.

    Raises the classifier's error for permanent failures and
    :class:`StorageUnavailable` (chained to the last failure) when transient
    ones outlast the policy. ``what`` names the operation in logs and errors.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:  # classified below; foreign errors are re-raised
            permanent = classify(exc)
            if permanent is not None:
                raise permanent from exc
            if attempt >= policy.max_attempts:
                raise StorageUnavailable(
                    f"{what} gave up after {attempt} failed attempts; last error: {describe(exc)}"
                ) from exc
            pause = policy.delay(attempt)
            log.warning(
                "storage retry: %s failed (attempt %d of %d): %s; retrying in %.2fs",
                what,
                attempt,
                policy.max_attempts,
                describe(exc),
                pause,
            )
            await asyncio.sleep(pause)


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs; botocore messages never include credentials."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

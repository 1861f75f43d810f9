"""Helpers for the storage tests: settings for moto, log triggers.

The moto credentials, the fault-injecting proxy and ``free_port`` live in
``tests/support`` and are re-exported here.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from comfyui_grpc.storage import S3Settings

try:
    from support.net import free_port
    from support.s3 import ACCESS_KEY, SECRET_KEY, FaultProxy
except ModuleNotFoundError:  # large_copy_worker.py runs with only tests/storage on its path
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from support.net import free_port
    from support.s3 import ACCESS_KEY, SECRET_KEY, FaultProxy

__all__ = [
    "ACCESS_KEY",
    "SECRET_KEY",
    "FaultProxy",
    "LogTrigger",
    "MiB",
    "free_port",
    "open_uploads",
    "s3_settings",
]

MiB = 1024 * 1024


def s3_settings(endpoint: str, **overrides: Any) -> S3Settings:
    """Settings for a fresh bucket, with small parts and quick back-off for tests."""
    base = S3Settings(
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        endpoint_url=endpoint,
        prefix="outputs",
        create_bucket=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        multipart_threshold_bytes=5 * MiB,
        part_size_bytes=5 * MiB,
        max_attempts=4,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        connect_timeout_seconds=5,
        read_timeout_seconds=20,
    )
    return replace(base, **overrides)


async def open_uploads(raw_s3: Any, bucket: str) -> list[dict[str, Any]]:
    response = await raw_s3.list_multipart_uploads(Bucket=bucket)
    uploads: list[dict[str, Any]] = response.get("Uploads", [])
    return uploads


class LogTrigger(logging.Handler):
    """Runs ``action`` once the ``times``-th storage log line containing ``needle`` is emitted.

    Retries log a warning before each back-off, so this lets a test react to
    the store's own progress instead of guessing with sleeps.
    """

    def __init__(self, needle: str, action: Callable[[], None], times: int = 1) -> None:
        super().__init__(level=logging.WARNING)
        self.needle = needle
        self.action = action
        self.times = times
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen += 1
            if self.seen == self.times:
                self.action()

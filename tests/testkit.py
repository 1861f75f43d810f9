"""Helpers shared by test modules (import as ``from testkit import ...``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from comfyui_grpc.config import Settings
from comfyui_grpc.storage import StorageSettings

STRICT = os.environ.get("COMFYUI_GRPC_TEST_STRICT") == "1"
"""Set by CI: a missing external tool fails the test instead of skipping it."""


def require_tool(name: str) -> str:
    """Path of an external tool; skips locally but fails in CI when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return path


def gateway_settings(tmp_path: Path, *urls: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "comfyui_urls": urls,
        "storage": StorageSettings(local_dir=tmp_path / "artifacts"),
        "reconcile_interval_seconds": 0.5,
        "shutdown_grace_seconds": 2.0,
        "metrics_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]

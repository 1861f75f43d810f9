"""Choosing the job store from the settings, and keeping its URL's password
out of everything shown."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from comfyui_grpc.config import Settings, add_arguments, describe, settings_from_args
from comfyui_grpc.redact import redact_database_url
from comfyui_grpc.state import NullJobStore, SqliteJobStore, open_job_store
from comfyui_grpc.state.postgres import PostgresJobStore

URL = "postgresql://gateway:hunter2@db.internal:5432/jobs?sslmode=require"


def _parse(*argv: str, env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)), env or {})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "postgresql://db.internal:5432/jobs?sslmode=require"),
        (
            "postgresql://u@h/db?password=hunter2&sslmode=disable",
            "postgresql://h/db?sslmode=disable",
        ),
        ("postgres://h/db?Password=hunter2", "postgres://h/db"),
        ("postgresql:///jobs", "postgresql:///jobs"),
    ],
)
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_database_url(url) == shown


def test_the_settings_log_shows_no_database_password() -> None:
    settings = _parse("--state-url", URL)
    assert settings.state_url == URL
    text = "\n".join(describe(settings)) + repr(settings)
    assert "hunter2" not in text
    assert "postgresql://db.internal:5432/jobs" in text


def test_the_url_comes_from_the_environment_or_a_file_flag() -> None:
    assert _parse(env={"COMFYUI_GRPC_STATE_URL": URL}).state_url == URL
    settings = _parse(env={"COMFYUI_GRPC_STATE_URL_FILE": "/run/secrets/db"})
    assert settings.state_url_file == "/run/secrets/db"


def test_a_malformed_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(env={"COMFYUI_GRPC_STATE_URL": "mysql://u:hunter2@h/db"})
    assert "postgresql://" in str(exited.value)
    assert "hunter2" not in str(exited.value)


@pytest.mark.parametrize(
    "argv",
    [
        ("--state-path", "var/state.db", "--state-url", URL),
        ("--state-url", URL, "--state-url-file", "/run/secrets/db"),
        ("--state-path", "var/state.db", "--state-url-file", "/run/secrets/db"),
    ],
)
def test_naming_two_job_stores_is_a_start_up_error(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(*argv)
    message = str(exited.value)
    assert "both set" in message
    assert "hunter2" not in message
    path = "var/state.db" if "--state-path" in argv else ""
    url = URL if "--state-url" in argv else ""
    url_file = "/run/secrets/db" if "--state-url-file" in argv else ""
    with pytest.raises(ValueError, match="both set"):
        open_job_store(path, url=url, url_file=url_file)


def test_the_settings_choose_the_store(tmp_path: Path) -> None:
    assert isinstance(open_job_store(""), NullJobStore)
    assert isinstance(open_job_store(str(tmp_path / "s.db")), SqliteJobStore)
    store = open_job_store(url=URL)
    assert isinstance(store, PostgresJobStore)
    assert "hunter2" not in repr(store)
    assert isinstance(open_job_store(url_file=str(tmp_path / "url")), PostgresJobStore)

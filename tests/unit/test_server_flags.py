"""Server flags behave the way their help says."""

from __future__ import annotations

import pytest
from comfyui_grpc.cli import DEV_STATE_PATH, build_parser, dev_defaults
from comfyui_grpc.config import settings_from_args


def parse(*argv: str, env: dict[str, str] | None = None) -> bool:
    args = build_parser().parse_args(["serve", *argv])
    return settings_from_args(args, env or {}).comfyui_dns_discovery


def test_dns_discovery_is_a_switch() -> None:
    assert parse() is False
    assert parse("--comfyui-dns-discovery") is True
    assert parse(env={"COMFYUI_GRPC_COMFYUI_DNS_DISCOVERY": "true"}) is True
    assert (
        parse("--no-comfyui-dns-discovery", env={"COMFYUI_GRPC_COMFYUI_DNS_DISCOVERY": "1"})
        is False
    )


def test_dns_discovery_takes_no_value() -> None:
    # Before, the flag swallowed the next word as its value.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--comfyui-dns-discovery", "true"])


def test_dev_keeps_job_records_in_sqlite_and_binds_loopback_unless_told() -> None:
    args = build_parser().parse_args(["dev"])
    dev_defaults(args, {})
    settings = settings_from_args(args, {})
    assert settings.state_path == DEV_STATE_PATH
    assert settings.host == "127.0.0.1"
    for given in (["dev", "--state-path", "/tmp/x.db"], ["dev", "--host", "0.0.0.0"]):
        args = build_parser().parse_args(given)
        dev_defaults(args, {})
        settings = settings_from_args(args, {})
        assert settings.state_path == ("/tmp/x.db" if "--state-path" in given else DEV_STATE_PATH)
    args = build_parser().parse_args(["dev"])
    dev_defaults(args, {"COMFYUI_GRPC_STATE_URL": "postgresql://h/db"})
    assert not args.state_path

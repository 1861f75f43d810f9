"""Server flags behave the way their help says."""

from __future__ import annotations

import pytest
from comfyui_grpc.cli import build_parser
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

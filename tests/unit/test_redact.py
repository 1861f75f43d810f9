"""ComfyUI URLs and headers as shown in logs: no credentials."""

from __future__ import annotations

import argparse

import pytest
from comfyui_grpc.config import add_arguments, describe, settings_from_args
from comfyui_grpc.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@comfyui:8188", "http://comfyui:8188"),
        ("https://user@comfyui/base/path?x=1", "https://comfyui/base/path?x=1"),
        ("http://u:p@ss@[::1]:8188/a@b", "http://[::1]:8188/a@b"),
        ("http://comfyui:8188", "http://comfyui:8188"),
        ("http://user:pass@host:notaport", "http://host:notaport"),
        ("user:pass@host", "host"),
    ],
)
def test_redact_url_removes_user_info_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_log_shows_no_comfyui_credentials() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--comfyui-url",
            "http://alice:hunter2@comfyui:8188",
            "--comfyui-header",
            "Authorization: Bearer tok-1",
            "--comfyui-header",
            "X-Team: imaging",
        ]
    )
    settings = settings_from_args(args, {"COMFYUI_GRPC_COMFYUI_TOKEN_FILE": "/run/token"})
    assert settings.comfyui_headers == (("Authorization", "Bearer tok-1"), ("X-Team", "imaging"))
    assert settings.comfyui_urls == ("http://alice:hunter2@comfyui:8188",)
    text = "\n".join(describe(settings)) + repr(settings)
    for secret in ("hunter2", "alice", "tok-1", "imaging"):
        assert secret not in text
    assert "http://comfyui:8188" in text


def test_comfyui_headers_from_the_environment_one_per_line() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"COMFYUI_GRPC_COMFYUI_HEADERS": "Authorization: Bearer a\nX-Other: b: c\n"}
    settings = settings_from_args(parser.parse_args([]), env)
    assert settings.comfyui_headers == (("Authorization", "Bearer a"), ("X-Other", "b: c"))
    with pytest.raises(SystemExit, match="Name: value"):
        settings_from_args(parser.parse_args([]), {"COMFYUI_GRPC_COMFYUI_HEADERS": "nocolon"})

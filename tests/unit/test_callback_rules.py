"""Callback signing and the allow list: pure rules, checked directly."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from comfyui_grpc.callbacks import signing
from comfyui_grpc.callbacks.delivery import backoff, retry_after_seconds
from comfyui_grpc.callbacks.policy import AllowList
from comfyui_grpc.errors import FailedPrecondition, InvalidArgument
from comfyui_grpc_client import CallbackSignatureError, verify_callback

BODY = b'{"jobId":"j"}'


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    header = signing.sign(BODY, b"s3cret", 1700000000)
    expected = hmac.new(b"s3cret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    signing.verify(BODY, header, [b"old", b"s3cret"], now=1700000100)


def test_the_sdk_accepts_what_the_gateway_signs_and_nothing_else() -> None:
    header = signing.sign(BODY, b"s3cret", 1700000000)
    assert verify_callback(BODY, header, "s3cret", now=1700000299) is True
    assert verify_callback(BODY, header, ["new", b"s3cret"], now=1700000000) is True
    cases = [
        (BODY + b"x", header, "s3cret", 1700000000, "mismatch"),
        (BODY, header, "other", 1700000000, "mismatch"),
        (BODY, header, "s3cret", 1700000301, "expired"),  # a replay, 5 minutes on
        (BODY, header, "s3cret", 1699999699, "expired"),
        (BODY, "v1=abc", "s3cret", 1700000000, "malformed"),
        (BODY, "", "s3cret", 1700000000, "malformed"),
    ]
    for body, value, secret, now, reason in cases:
        with pytest.raises(CallbackSignatureError) as error:
            verify_callback(body, value, secret, now=now)
        assert error.value.reason == reason
        with pytest.raises(signing.SignatureError):
            signing.verify(body, value, [secret.encode()], now=now)


def test_secret_file_lines_first_signs(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("\n  new  \nold\n\n")
    assert signing.read_secrets(str(path)) == [b"new", b"old"]
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="no callback secret"):
        signing.read_secrets(str(path))


def test_allow_list_entries() -> None:
    allow = AllowList.parse(["hooks.example.com", "*.Example.ORG", "10.0.0.0/8", "192.0.2.7"])
    assert allow.host_allowed("hooks.example.com")
    assert not allow.host_allowed("evil-hooks.example.com")
    assert allow.host_allowed("a.b.example.org")
    assert not allow.host_allowed("example.org")  # *.domain: subdomains only
    assert not allow.host_allowed("example.org.evil.com")
    assert allow.host_allowed("10.9.8.7")
    assert allow.host_allowed("192.0.2.7")
    assert not allow.host_allowed("192.0.2.8")
    for bad in ("*.", "http://x", "a b", "*.-x.com"):
        with pytest.raises(ValueError, match=r"\*\.|not a host name"):
            AllowList.parse([bad])


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),  # public
        ("127.0.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # loopback in IPv6 clothing
        ("169.254.169.254", False),  # cloud metadata
        ("fd00:ec2::254", False),
        ("192.168.1.10", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("10.1.2.3", True),  # listed
    ],
)
def test_addresses_must_be_public_or_listed(address: str, allowed: bool) -> None:
    allow = AllowList.parse(["*.example.com", "10.0.0.0/8"])
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    assert allow.address_allowed(parsed) is allowed


def test_url_checks_name_the_field_or_the_flag() -> None:
    allow = AllowList.parse(["hooks.example.com"])
    assert allow.check_url("https://hooks.example.com/x?y=1").hostname == "hooks.example.com"
    with pytest.raises(FailedPrecondition, match="--callback-allow-http"):
        allow.check_url("http://hooks.example.com/x")
    with pytest.raises(FailedPrecondition, match="--callback-allow"):
        allow.check_url("https://other.example.com/x")
    with pytest.raises(FailedPrecondition, match="--callback-allow"):
        AllowList().check_url("https://hooks.example.com/x")
    for bad in ("", "hooks.example.com/x", "https://", "https://h:99999/", "https://a_b.com/"):
        with pytest.raises(InvalidArgument) as error:
            allow.check_url(bad)
        assert [v.field for v in error.value.violations] == ["callback.url"]
    with pytest.raises(InvalidArgument):
        allow.check_url("https://hooks.example.com/" + "x" * 2100)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    import random

    rng = random.Random(1)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (20, 600.0)):
        delay = backoff(attempt, 1.0, 600.0, rng)
        assert full / 2 <= delay <= full
    assert retry_after_seconds("7", 0.0) == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after_seconds("soon", 0.0) is None


def test_callback_allow_without_a_secret_refuses_to_start(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "comfyui_grpc", "serve", "--host", "127.0.0.1",
         "--callback-allow", "hooks.example.com"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--callback-secret-file" in run.stderr

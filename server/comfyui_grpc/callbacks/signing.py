"""Callback signatures: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">``.

The timestamp is inside the signed text, so a receiver that refuses old
timestamps cannot be fed a replay of an old delivery with a new date.
Several ``v1=`` entries may appear (a sender signing with two secrets
during a rotation); one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from pathlib import Path

SIGNATURE_HEADER = "X-ComfyUI-GRPC-Signature"
DELIVERY_HEADER = "X-ComfyUI-GRPC-Delivery"
JOB_HEADER = "X-ComfyUI-GRPC-Job"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A callback's signature is malformed, stale or does not match."""


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """The header value for ``body`` signed with ``secret`` at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header value."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed signature header: {part.strip()[:40]!r}")
        if key == "t":
            if not value.isdigit():
                raise SignatureError("the signature's t= is not a unix time")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("the signature header needs t= and v1=")
    return timestamp, signatures


def verify(
    body: bytes,
    header: str,
    secrets: Iterable[bytes],
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` with one of
    ``secrets`` and its timestamp is within ``tolerance_seconds`` of ``now``."""
    timestamp, signatures = parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError(
            f"the signature is {abs(current - timestamp):.0f} s from now "
            f"(tolerance {tolerance_seconds:.0f} s)"
        )
    for secret in secrets:
        expected = _mac(secret, timestamp, body)
        if any(hmac.compare_digest(expected, s) for s in signatures):
            return
    raise SignatureError("the signature does not match the body")


def read_secrets(path: str) -> list[bytes]:
    """The secrets in a ``--callback-secret-file``: one per line, the first signs.

    Older ones may follow it so receivers can be moved to a new secret
    without a gap (receivers accept either while they rotate).
    """
    secrets = [line.strip().encode() for line in Path(path).read_text().splitlines()]
    secrets = [s for s in secrets if s]
    if not secrets:
        raise ValueError(f"{path} holds no callback secret")
    return secrets

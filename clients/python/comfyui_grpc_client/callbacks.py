"""Checking a completion callback's signature in the receiver.

The gateway POSTs a finished job to ``GenerateRequest.callback.url`` with

    X-ComfyUI-GRPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    X-ComfyUI-GRPC-Delivery:  a unique id, the same on every retry (deduplicate on it)
    X-ComfyUI-GRPC-Job:       the job id

Verify the raw body, before parsing it, with the secret from the gateway's
``--callback-secret-file``; during a rotation pass the old and new secrets.
(:func:`verify_callback` needs only the standard library; the README has a
receiver that copies it.)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from comfyui_grpc.v1 import job_pb2
from google.protobuf import json_format

SIGNATURE_HEADER = "X-ComfyUI-GRPC-Signature"
DELIVERY_HEADER = "X-ComfyUI-GRPC-Delivery"
JOB_HEADER = "X-ComfyUI-GRPC-Job"

Secret = str | bytes


class CallbackSignatureError(ValueError):
    """The callback is not from the gateway, or too old: do not act on it.

    ``reason`` is ``malformed`` (no usable header), ``expired`` (its time is
    further than ``tolerance`` seconds from now: a replay or a wrong clock)
    or ``mismatch`` (wrong secret, or the body was changed).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if key == "t" and sep and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and sep:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise CallbackSignatureError(
            "malformed", f"{SIGNATURE_HEADER} must be 't=<unix seconds>,v1=<hex>'"
        )
    return timestamp, signatures


def verify_callback(
    body: bytes,
    header: str | None,
    secret: Secret | Sequence[Secret],
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when ``header`` (the ``X-ComfyUI-GRPC-Signature`` value) signs ``body``
    with ``secret`` (or one of several) within ``tolerance`` seconds of now;
    raises :class:`CallbackSignatureError` otherwise."""
    if not header:
        raise CallbackSignatureError("malformed", f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    age = abs((time.time() if now is None else now) - timestamp)
    if age > tolerance:
        raise CallbackSignatureError(
            "expired", f"the signature is {age:.0f} s old (tolerance {tolerance:.0f} s)"
        )
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    signed = f"{timestamp}.".encode() + body
    for one in secrets:
        key = one.encode() if isinstance(one, str) else one
        expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, s) for s in signatures):
            return True
    raise CallbackSignatureError("mismatch", "the signature does not match the body")


def parse_callback(body: bytes) -> job_pb2.Job:
    """The job in a callback's body (verify it first), as GetResult would return it."""
    job = job_pb2.Job()
    json_format.Parse(body, job, ignore_unknown_fields=True)
    return job

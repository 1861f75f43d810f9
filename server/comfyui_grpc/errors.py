"""Domain errors, raised below the API layer and mapped to gRPC status codes
in exactly one place (:mod:`comfyui_grpc.api.status`).

    GatewayError
    ├── InvalidArgument      bad request; carries field violations
    ├── NotFound             unknown job or artifact
    ├── FailedPrecondition   request conflicts with the job's state
    ├── ResourceExhausted    too much queued work; carries a retry hint
    ├── Unavailable          ComfyUI or the store cannot be reached now
    └── Unauthenticated      missing or wrong credentials

Every message is written for the caller: it says what was wrong and, where
possible, what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: ``field`` is a dotted path such as ``text_to_image.width``
    or ``workflow.3.inputs.seed``."""

    field: str
    description: str
    reason: str = ""


class GatewayError(Exception):
    """Base of every error the gateway reports to callers on purpose."""

    reason: str = "GATEWAY_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(GatewayError):
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = list(violations or [])


class NotFound(GatewayError):
    reason = "NOT_FOUND"


class FailedPrecondition(GatewayError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(GatewayError):
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, retry_after_seconds: float = 1.0, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(GatewayError):
    reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds
        """Sent as RetryInfo when set: how long retrying is pointless."""


class Unauthenticated(GatewayError):
    reason = "UNAUTHENTICATED"

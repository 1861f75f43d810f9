"""Typed errors: every failed call becomes a :class:`GenerationError` subclass.

The gateway puts a ``google.rpc.Status`` into the ``grpc-status-details-bin``
trailer: an ``ErrorInfo`` with a stable ``reason``, ``BadRequest`` field
violations for bad requests and ``RetryInfo`` when the queue is full. Callers
should not have to decode that themselves, so :func:`from_rpc_error` lifts it
into plain attributes (``code``, ``reason``, ``violations``, ``retry_delay``).

    GenerationError
    ├── RpcError                    the gateway answered with a non-OK status
    │   ├── InvalidArgumentError    .violations
    │   ├── NotFoundError
    │   ├── FailedPreconditionError
    │   ├── ResourceExhaustedError  .retry_delay
    │   ├── UnavailableError
    │   ├── DeadlineExceededError
    │   ├── UnauthenticatedError
    │   ├── PermissionDeniedError
    │   ├── CallCancelledError
    │   └── InternalError
    ├── JobFailedError              the job ended FAILED (.job, .error)
    ├── JobCancelledError           the job ended CANCELLED (.job)
    └── ChecksumMismatchError       a download did not match the artifact's sha256
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from .models import Job, JobError

ERROR_DOMAIN = "comfyui-grpc"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, e.g. ``text_to_image.width`` or ``workflow.3.inputs.seed``."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class GenerationError(Exception):
    """Base of every error the SDK raises on purpose.

    ``code`` is the gRPC status code (None when no call failed, e.g. a job that
    ran and failed); ``reason`` is the stable machine-readable cause.
    """

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def one_line(self) -> str:
        """The error as a single line for terminals and logs."""
        return self.message.replace("\n", " ")


class RpcError(GenerationError):
    """The gateway (or the transport) answered a call with a non-OK status."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason or code.name)
        self.code = code
        self.violations = violations
        self.retry_delay = retry_delay
        self.domain = domain
        self.metadata = dict(metadata or {})

    def one_line(self) -> str:
        assert self.code is not None
        text = f"{self.code.name}"
        if self.reason and self.reason != self.code.name:
            text += f" ({self.reason})"
        text += f": {self.message}"
        missing = [str(v) for v in self.violations if str(v) not in self.message]
        if missing:
            text += " [" + "; ".join(missing) + "]"
        if self.retry_delay is not None:
            text += f" (retry in {self.retry_delay:g} s)"
        return text.replace("\n", " ")

    def __str__(self) -> str:
        return self.one_line()


class InvalidArgumentError(RpcError):
    """The request was refused; ``violations`` names each bad field."""


class NotFoundError(RpcError):
    """No such job or artifact."""


class FailedPreconditionError(RpcError):
    """The request conflicts with the job's state (e.g. a reused request_id)."""


class ResourceExhaustedError(RpcError):
    """Too much queued work; ``retry_delay`` says when to try again."""


class UnavailableError(RpcError):
    """The gateway, ComfyUI or the store could not be reached; retrying may help."""


class DeadlineExceededError(RpcError):
    """The call or the whole operation ran out of time."""


class UnauthenticatedError(RpcError):
    """Missing or wrong credentials (check the token)."""


class PermissionDeniedError(RpcError):
    """The credentials are valid but not allowed to do this."""


class CallCancelledError(RpcError):
    """The call was cancelled before it finished (not the job: see JobCancelledError)."""


class InternalError(RpcError):
    """The gateway failed unexpectedly; its message carries an incident id."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: FailedPreconditionError,
    grpc.StatusCode.ABORTED: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
}


class JobFailedError(GenerationError):
    """The job ran and ended FAILED: not a call error, so ``code`` is None."""

    def __init__(self, job: Job) -> None:
        error = job.error
        reason = error.reason if error else "FAILED"
        text = error.message if error and error.message else "the job failed"
        if error and error.node_id:
            text += f" (node {error.node_id}"
            text += f" {error.class_type})" if error.class_type else ")"
        super().__init__(f"job {job.job_id} failed: {reason}: {text}", reason=reason)
        self.job = job
        self.error: JobError | None = error


class JobCancelledError(GenerationError):
    """The job ended CANCELLED before it produced its outputs."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.job_id} was cancelled", reason="CANCELLED")
        self.job = job


class ChecksumMismatchError(GenerationError):
    """Downloaded bytes differ from the artifact's recorded size or sha256."""

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {key}: expected {expected}, got {actual}; the file was not saved",
            reason="CHECKSUM_MISMATCH",
        )
        self.key = key
        self.expected = expected
        self.actual = actual


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    trailers = getattr(error, "trailing_metadata", None)
    if trailers is None:
        return None
    for key, value in trailers() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer must not hide the real error
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> RpcError:
    """Turn a grpc (sync or aio) error into the matching typed error."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or code.name.lower()
    reason, domain = "", ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    status = _rich_status(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain = info.reason, info.domain
                metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    kind = _BY_CODE.get(code, InternalError)
    return kind(
        message,
        code=code,
        reason=reason,
        violations=tuple(violations),
        retry_delay=retry_delay,
        domain=domain,
        metadata=metadata,
    )

"""Domain errors -> gRPC status, in exactly one place.

Every status carries ``google.rpc.ErrorInfo`` (domain ``comfyui-grpc``, a
stable reason) and, where it helps, ``BadRequest`` field violations or
``RetryInfo``, sent the standard way (``grpc-status-details-bin``) so every
gRPC language can read them.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "comfyui-grpc"

_CODES: list[tuple[type[GatewayError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (Unavailable, code_pb2.UNAVAILABLE),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: GatewayError) -> grpc.Status:
    rpc_code = code_pb2.INTERNAL
    for kind, proto_code in _CODES:
        if isinstance(error, kind):
            rpc_code = proto_code
            break
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    retry_after = (
        error.retry_after_seconds if isinstance(error, ResourceExhausted | Unavailable) else None
    )
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    # Messages may quote caller input; keep them valid UTF-8 whatever it was.
    message = error.message[:4000].encode("utf-8", "backslashreplace").decode()
    status = status_pb2.Status(code=rpc_code, message=message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def internal_status(exc: BaseException, method: str) -> grpc.Status:
    """An unexpected failure: logged with an incident id the caller can quote."""
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (incident %s)", method, incident, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error in {method} (incident {incident}); the server log has details",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result

"""Python SDK for the comfyui-grpc gateway.

    from comfyui_grpc_client import Client

    with Client("localhost:50051") as client:
        result = client.generate_image("a lighthouse at dusk", on_progress=print)
        result.download_all("out")

:class:`AsyncClient` is the asyncio twin. Only grpcio, protobuf and the
generated stubs are needed: none of the server's dependencies.

Importing the SDK first asks gRPC core for errors only (``GRPC_VERBOSITY``
``ERROR``, unless the variable is set): its INFO lines on stderr, such as
``chttp2_transport.cc ... Got goaway`` when a gateway restarts, are transport
chatter the SDK already turns into typed errors. gRPC reads the variable
once, when it is first imported.
"""

import os as _os

_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .callbacks import CallbackSignatureError, parse_callback, verify_callback
from .client import (
    AsyncClient,
    GenerationResult,
    JobHandle,
    JobPage,
    PreviewCallback,
    ProgressCallback,
    RetryPolicy,
    new_request_id,
)
from .credentials import DEFAULT_TARGET, ConnectionConfig, TLSConfig
from .errors import (
    CallCancelledError,
    ChecksumMismatchError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GenerationError,
    InternalError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from .models import (
    Artifact,
    Job,
    JobError,
    JobKind,
    JobProgress,
    JobState,
    ModelFile,
    ModelFolder,
    ParameterType,
    Priority,
    Submission,
    Template,
    TemplateParameter,
    UploadedInput,
    VideoFormat,
)
from .progress import EventKind, Preview, ProgressUpdate
from .requests import (
    image_request,
    template_request,
    template_value,
    video_request,
    workflow_request,
)
from .sync import Client, SyncGenerationResult, SyncJobHandle

__all__ = [
    "DEFAULT_TARGET",
    "Artifact",
    "AsyncClient",
    "CallCancelledError",
    "CallbackSignatureError",
    "ChecksumMismatchError",
    "Client",
    "ConnectionConfig",
    "DeadlineExceededError",
    "EventKind",
    "FailedPreconditionError",
    "FieldViolation",
    "GenerationError",
    "GenerationResult",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobKind",
    "JobPage",
    "JobProgress",
    "JobState",
    "ModelFile",
    "ModelFolder",
    "NotFoundError",
    "ParameterType",
    "PermissionDeniedError",
    "Preview",
    "PreviewCallback",
    "Priority",
    "ProgressCallback",
    "ProgressUpdate",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RpcError",
    "Submission",
    "SyncGenerationResult",
    "SyncJobHandle",
    "TLSConfig",
    "Template",
    "TemplateParameter",
    "UnauthenticatedError",
    "UnavailableError",
    "UploadedInput",
    "VideoFormat",
    "from_rpc_error",
    "image_request",
    "new_request_id",
    "parse_callback",
    "template_request",
    "template_value",
    "verify_callback",
    "video_request",
    "workflow_request",
]

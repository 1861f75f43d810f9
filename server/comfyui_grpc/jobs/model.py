"""Plain data describing jobs: states, artifacts, failures, progress.

No I/O and no gRPC types: the API layer converts these at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..comfyui.outputs import OutputFile

__all__ = [
    "Artifact",
    "FailureReason",
    "JobFailure",
    "JobKind",
    "JobState",
    "OutputFile",
    "ProgressView",
]


class JobState(enum.Enum):
    """Lifecycle states; a job only moves forward and ends in a terminal one."""

    QUEUED = "queued"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobKind(enum.Enum):
    TEXT_TO_IMAGE = "text_to_image"
    VIDEO = "video"
    WORKFLOW = "workflow"


class FailureReason(enum.StrEnum):
    """Stable, machine-readable causes of a FAILED job (``JobError.reason``)."""

    EXECUTION_ERROR = "EXECUTION_ERROR"
    INTERRUPTED = "INTERRUPTED"
    STORAGE_FAILED = "STORAGE_FAILED"
    BACKEND_LOST = "BACKEND_LOST"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    OUTPUT_MISSING = "OUTPUT_MISSING"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    """An output stored in the artifact store."""

    node_id: str
    filename: str
    key: str
    uri: str
    content_type: str
    size_bytes: int
    sha256: str
    animated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFailure:
    reason: str
    message: str
    node_id: str = ""
    class_type: str = ""
    exception_type: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressView:
    """A point-in-time view of a job's progress."""

    fraction: float = 0.0
    node_id: str = ""
    class_type: str = ""
    value: int = 0
    max: int = 0
    nodes_completed: int = 0
    nodes_total: int = 0

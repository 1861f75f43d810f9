"""Plain, immutable views of the gateway's messages.

Protobuf messages are awkward to pass around (mutable, ``HasField``
checks, enum ints); these dataclasses are what SDK callers see. Each keeps
the original message in ``raw`` for the rare field not lifted here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import job_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2


class JobState(enum.IntEnum):
    """A job's lifecycle state; values match ``comfyui_grpc.v1.JobState``."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    UPLOADING = job_pb2.JOB_STATE_UPLOADING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED

    @property
    def terminal(self) -> bool:
        """Whether the job can no longer change."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def parse(cls, value: int) -> JobState:
        """An enum member, or UNSPECIFIED for a value a newer server added."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


class JobKind(enum.IntEnum):
    """What kind of request created a job."""

    UNSPECIFIED = job_pb2.JOB_KIND_UNSPECIFIED
    TEXT_TO_IMAGE = job_pb2.JOB_KIND_TEXT_TO_IMAGE
    VIDEO = job_pb2.JOB_KIND_VIDEO
    WORKFLOW = job_pb2.JOB_KIND_WORKFLOW


class Priority(enum.IntEnum):
    """Queue placement on the backend."""

    NORMAL = pb.PRIORITY_NORMAL
    HIGH = pb.PRIORITY_HIGH


class VideoFormat(enum.IntEnum):
    """Container and codec of a generated video."""

    H264_MP4 = pb.VIDEO_FORMAT_H264_MP4
    GIF = pb.VIDEO_FORMAT_GIF
    WEBP = pb.VIDEO_FORMAT_WEBP


def timestamp(value: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    """A UTC datetime, or None for an unset timestamp."""
    if not present or (value.seconds == 0 and value.nanos == 0):
        return None
    return value.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One stored output. ``job_id`` is filled in by the SDK so the artifact
    alone is enough to download it."""

    job_id: str
    key: str
    uri: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    node_id: str = ""
    animated: bool = False
    presigned_url: str = ""
    presigned_url_expire_time: datetime | None = None

    @classmethod
    def from_proto(cls, message: job_pb2.Artifact, job_id: str) -> Artifact:
        return cls(
            job_id=job_id,
            key=message.key,
            uri=message.uri,
            filename=message.filename,
            content_type=message.content_type,
            size_bytes=message.size_bytes,
            sha256=message.sha256,
            node_id=message.node_id,
            animated=message.animated,
            presigned_url=message.presigned_url,
            presigned_url_expire_time=timestamp(
                message.presigned_url_expire_time, message.HasField("presigned_url_expire_time")
            ),
        )


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed; ``reason`` is stable (e.g. ``EXECUTION_ERROR``)."""

    reason: str
    message: str
    node_id: str = ""
    class_type: str = ""
    exception_type: str = ""

    @classmethod
    def from_proto(cls, message: job_pb2.JobError) -> JobError:
        return cls(
            reason=message.reason,
            message=message.message,
            node_id=message.node_id,
            class_type=message.class_type,
            exception_type=message.exception_type,
        )


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Where a job stands: overall ``fraction`` and the node running now."""

    fraction: float = 0.0
    node_id: str = ""
    class_type: str = ""
    value: int = 0
    max: int = 0
    nodes_completed: int = 0
    nodes_total: int = 0

    @classmethod
    def from_proto(cls, message: job_pb2.JobProgress) -> JobProgress:
        return cls(
            fraction=message.fraction,
            node_id=message.node_id,
            class_type=message.class_type,
            value=message.value,
            max=message.max,
            nodes_completed=message.nodes_completed,
            nodes_total=message.nodes_total,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A generation job as the gateway reports it."""

    job_id: str
    state: JobState
    kind: JobKind
    request_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    queue_position: int = 0
    progress: JobProgress = field(default_factory=JobProgress)
    artifacts: tuple[Artifact, ...] = ()
    error: JobError | None = None
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    backend: str = ""
    sequence: int = 0
    cancel_requested: bool = False
    template: str = ""
    """The template the job was made from (``text-to-image``/``video`` for the
    typed requests); empty for a raw workflow."""
    template_version: int = 0
    template_params: dict[str, Any] = field(default_factory=dict)
    """Every parameter's value as used: defaults and random seeds filled in,
    inline images as the name they were uploaded under."""
    raw: job_pb2.Job | None = field(default=None, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @classmethod
    def from_proto(cls, message: job_pb2.Job) -> Job:
        try:
            kind = JobKind(message.kind)
        except ValueError:
            kind = JobKind.UNSPECIFIED
        return cls(
            job_id=message.job_id,
            state=JobState.parse(message.state),
            kind=kind,
            request_id=message.request_id,
            labels=dict(message.labels),
            queue_position=message.queue_position,
            progress=JobProgress.from_proto(message.progress),
            artifacts=tuple(Artifact.from_proto(a, message.job_id) for a in message.artifacts),
            error=JobError.from_proto(message.error) if message.HasField("error") else None,
            create_time=timestamp(message.create_time, message.HasField("create_time")),
            start_time=timestamp(message.start_time, message.HasField("start_time")),
            end_time=timestamp(message.end_time, message.HasField("end_time")),
            backend=message.backend,
            sequence=message.sequence,
            cancel_requested=message.cancel_requested,
            template=message.template,
            template_version=message.template_version,
            template_params=_struct_dict(message.template_params),
            raw=message,
        )


@dataclass(frozen=True, slots=True)
class Submission:
    """What Generate answered. ``request_id`` is the idempotency key the SDK
    sent (generated when the caller gave none), so a caller can retry later."""

    job_id: str
    state: JobState
    queue_position: int
    deduplicated: bool
    request_id: str
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class UploadedInput:
    """An uploaded input image; use ``image`` as a LoadImage ``image`` input."""

    image: str
    name: str
    subfolder: str
    backends: tuple[str, ...]
    size_bytes: int


def _plain(value: Any) -> Any:
    """JSON-like data with whole numbers as ints: a ``Struct`` carries every
    number as a double, but seeds and steps are whole numbers to callers."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _struct_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    value: dict[str, Any] = _plain(json_format.MessageToDict(message))
    return value


def _value(message: struct_pb2.Value) -> Any:
    return _plain(json_format.MessageToDict(message))


class ParameterType(enum.IntEnum):
    """The kind of value a template parameter takes."""

    UNSPECIFIED = pb.PARAMETER_TYPE_UNSPECIFIED
    STRING = pb.PARAMETER_TYPE_STRING
    INT = pb.PARAMETER_TYPE_INT
    FLOAT = pb.PARAMETER_TYPE_FLOAT
    BOOL = pb.PARAMETER_TYPE_BOOL
    ENUM = pb.PARAMETER_TYPE_ENUM
    SEED = pb.PARAMETER_TYPE_SEED
    MODEL = pb.PARAMETER_TYPE_MODEL
    IMAGE = pb.PARAMETER_TYPE_IMAGE

    @classmethod
    def parse(cls, value: int) -> ParameterType:
        """An enum member, or UNSPECIFIED for a type a newer server added."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class TemplateParameter:
    """One named input of a template. ``default`` is None when there is none
    (``has_default`` tells a null default apart)."""

    name: str
    type: ParameterType
    description: str = ""
    required: bool = False
    default: Any = None
    has_default: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    """ENUM: the allowed values. MODEL: the files of ``folder`` some backend has."""
    folder: str = ""

    @classmethod
    def from_proto(cls, message: pb.TemplateParameter) -> TemplateParameter:
        present = message.HasField("default_value")
        return cls(
            name=message.name,
            type=ParameterType.parse(message.type),
            description=message.description,
            required=message.required,
            default=_value(message.default_value) if present else None,
            has_default=present,
            min=message.min if message.HasField("min") else None,
            max=message.max if message.HasField("max") else None,
            values=tuple(message.values),
            folder=message.folder,
        )


@dataclass(frozen=True, slots=True)
class Template:
    """A workflow callers run by name with typed parameters."""

    name: str
    version: int
    description: str = ""
    parameters: tuple[TemplateParameter, ...] = ()
    outputs: tuple[str, ...] = ()
    """The node ids whose files become artifacts; empty: every output node."""
    runnable: bool = False
    """Whether a connected backend can run it now."""
    unrunnable_reason: str = ""
    built_in: bool = False
    raw: pb.Template | None = field(default=None, repr=False, compare=False)

    def parameter(self, name: str) -> TemplateParameter:
        """The parameter called ``name``; KeyError naming the known ones otherwise."""
        for param in self.parameters:
            if param.name == name:
                return param
        known = ", ".join(p.name for p in self.parameters) or "none"
        raise KeyError(f"{self.name} has no parameter {name!r} (it has: {known})")

    @classmethod
    def from_proto(cls, message: pb.Template) -> Template:
        return cls(
            name=message.name,
            version=message.version,
            description=message.description,
            parameters=tuple(TemplateParameter.from_proto(p) for p in message.parameters),
            outputs=tuple(message.outputs),
            runnable=message.runnable,
            unrunnable_reason=message.unrunnable_reason,
            built_in=message.built_in,
            raw=message,
        )


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A model file and the backends (base URLs) that hold it."""

    name: str
    backends: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """The files of one model folder, e.g. ``checkpoints``."""

    name: str
    files: tuple[ModelFile, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    @classmethod
    def from_proto(cls, message: pb.ModelFolder) -> ModelFolder:
        return cls(
            name=message.name,
            files=tuple(ModelFile(f.name, tuple(f.backends)) for f in message.files),
        )

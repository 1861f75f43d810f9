"""GenerateRequest -> JobSpec: defaults, checks and the graph to submit."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from ..callbacks.policy import AllowList
from ..errors import FieldViolation, InvalidArgument
from ..jobs.job import JobSpec
from ..jobs.model import JobKind
from ..storage import workflow_sha256
from ..v1 import generation_service_pb2 as pb
from ..workflows import (
    TextToImageParams,
    VideoParams,
    parse_workflow_json,
    validate_graph,
    whole_numbers_to_int,
)
from ..workflows.builtin_templates import TEXT_TO_IMAGE, VIDEO
from ..workflows.graph import MAX_WORKFLOW_BYTES, too_large, too_many_bytes
from ..workflows.template_files import Template
from ..workflows.template_params import PARAMS_FIELD, resolve
from ..workflows.templates import (
    DEFAULT_IMAGE_CHECKPOINT,
    DEFAULT_MOTION_MODULE,
    DEFAULT_VIDEO_CHECKPOINT,
)

MAX_REQUEST_ID_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_CHARS = 256

_VIDEO_FORMATS = {
    pb.VIDEO_FORMAT_UNSPECIFIED: "video/h264-mp4",
    pb.VIDEO_FORMAT_H264_MP4: "video/h264-mp4",
    pb.VIDEO_FORMAT_GIF: "image/gif",
    pb.VIDEO_FORMAT_WEBP: "image/webp",
}


def _check_envelope(request: pb.GenerateRequest) -> None:
    violations: list[FieldViolation] = []
    rid = request.request_id
    if len(rid) > MAX_REQUEST_ID_CHARS or not rid.isprintable():
        violations.append(
            FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} printable characters")
        )
    if len(request.labels) > MAX_LABELS:
        violations.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
    for key, value in request.labels.items():
        if not key or len(key) > MAX_LABEL_CHARS or not key.isprintable():
            violations.append(
                FieldViolation(
                    f"labels[{key[:40]!r}]", f"keys are 1-{MAX_LABEL_CHARS} printable characters"
                )
            )
        if len(value) > MAX_LABEL_CHARS or not value.isprintable():
            violations.append(
                FieldViolation(
                    f"labels[{key[:40]!r}]",
                    f"values are at most {MAX_LABEL_CHARS} printable characters",
                )
            )
    if request.priority not in (pb.PRIORITY_UNSPECIFIED, pb.PRIORITY_NORMAL, pb.PRIORITY_HIGH):
        violations.append(FieldViolation("priority", "unknown priority value"))
    if violations:
        raise InvalidArgument(
            f"invalid request: {violations[0].field}: {violations[0].description}", violations
        )


def text_to_image_params(m: pb.TextToImage) -> TextToImageParams:
    return TextToImageParams(
        prompt=m.prompt,
        negative_prompt=m.negative_prompt,
        width=m.width or 1024,
        height=m.height or 1024,
        steps=m.steps or 20,
        cfg=m.cfg if m.HasField("cfg") else 7.0,
        seed=m.seed if m.HasField("seed") else None,
        sampler=m.sampler or "euler",
        scheduler=m.scheduler or "normal",
        checkpoint=m.checkpoint or DEFAULT_IMAGE_CHECKPOINT,
        batch_size=m.batch_size or 1,
    )


def video_params(m: pb.Video) -> VideoParams:
    if m.format not in _VIDEO_FORMATS:
        raise InvalidArgument(
            "invalid video request: video.format: unknown format",
            [FieldViolation("video.format", "unknown VideoFormat value")],
        )
    return VideoParams(
        prompt=m.prompt,
        negative_prompt=m.negative_prompt,
        frames=m.frames or 16,
        fps=m.fps if m.HasField("fps") else 8.0,
        width=m.width or 512,
        height=m.height or 512,
        motion_module=m.motion_module or DEFAULT_MOTION_MODULE,
        checkpoint=m.checkpoint or DEFAULT_VIDEO_CHECKPOINT,
        steps=m.steps or 20,
        cfg=m.cfg if m.HasField("cfg") else 7.0,
        seed=m.seed if m.HasField("seed") else None,
        format=_VIDEO_FORMATS[m.format],
        sampler=m.sampler or "euler_ancestral",
        scheduler=m.scheduler or "normal",
    )


def _struct_graph(workflow: struct_pb2.Struct, *, max_nodes: int, max_bytes: int) -> dict[str, Any]:
    """The workflow as a dict, its node count and size checked first:
    converting a Struct costs far more than the Struct itself."""
    if len(workflow.fields) > max_nodes:
        raise too_large("workflow", len(workflow.fields), max_nodes)
    size = workflow.ByteSize()
    if size > max_bytes:
        raise too_many_bytes("workflow", size, max_bytes)
    try:
        graph: dict[str, Any] = whole_numbers_to_int(json_format.MessageToDict(workflow))
    except ValueError as exc:
        raise InvalidArgument(
            f"workflow holds a value JSON cannot express: {exc}",
            [FieldViolation("workflow", "numbers must be finite (no NaN or Infinity)")],
        ) from exc
    return graph


def template_params(params: struct_pb2.Struct) -> dict[str, Any]:
    """``TemplateRequest.params`` as plain values (whole numbers as ints)."""
    try:
        values: dict[str, Any] = whole_numbers_to_int(json_format.MessageToDict(params))
    except ValueError as exc:
        raise InvalidArgument(
            f"template.params holds a value JSON cannot express: {exc}",
            [FieldViolation(PARAMS_FIELD, "numbers must be finite (no NaN or Infinity)")],
        ) from exc
    return values


def _kind_of_template(template: Template) -> JobKind:
    if template is TEXT_TO_IMAGE:
        return JobKind.TEXT_TO_IMAGE
    if template is VIDEO:
        return JobKind.VIDEO
    return JobKind.WORKFLOW


def _typed(params: TextToImageParams | VideoParams) -> dict[str, Any]:
    """A typed request's values, with the seed it will use when none was given."""
    values = dataclasses.asdict(params)
    if values["seed"] is None:
        values["seed"] = secrets.randbelow(2**53)
    return values


def spec_from_request(
    request: pb.GenerateRequest,
    job_id: str,
    *,
    max_nodes: int,
    max_bytes: int = MAX_WORKFLOW_BYTES,
    caller: str = "anonymous",
    template: Template | None = None,
    params: Mapping[str, Any] | None = None,
    callback_allow: AllowList | None = None,
) -> JobSpec:
    """Build the job's spec, raising InvalidArgument with every violation found
    (FailedPrecondition for a callback URL the gateway may not call).

    For ``template``, the caller looks the template up and passes it with
    ``params`` (image values already uploaded names).
    """
    _check_envelope(request)
    callback_url = ""
    if request.HasField("callback"):
        (callback_allow or AllowList()).check_url(request.callback.url)
        callback_url = request.callback.url
    which = request.WhichOneof("input")
    field_map: Mapping[tuple[str, str], str] = {}
    graph: dict[str, Any]
    used: Template | None = None
    values: dict[str, Any] = {}
    match which:
        case "text_to_image":
            kind, used = JobKind.TEXT_TO_IMAGE, TEXT_TO_IMAGE
            values = _typed(text_to_image_params(request.text_to_image))
            graph = used.build(job_id, values, "text_to_image")
            field_map = used.field_map("text_to_image")
        case "video":
            kind, used = JobKind.VIDEO, VIDEO
            values = _typed(video_params(request.video))
            graph = used.build(job_id, values, "video")
            field_map = used.field_map("video")
        case "template":
            if template is None or params is None:
                raise ValueError("a template request needs its template and params")
            kind, used = _kind_of_template(template), template
            values = resolve(template.params, params)
            graph = used.build(job_id, values)
            field_map = used.field_map()
        case "workflow":
            kind = JobKind.WORKFLOW
            graph = _struct_graph(request.workflow, max_nodes=max_nodes, max_bytes=max_bytes)
            validate_graph(graph, "workflow", max_nodes=max_nodes)
        case "workflow_json":
            kind = JobKind.WORKFLOW
            size = len(request.workflow_json.encode())
            if size > max_bytes:
                raise too_many_bytes("workflow_json", size, max_bytes)
            graph = parse_workflow_json(request.workflow_json, max_nodes=max_nodes)
            validate_graph(graph, "workflow_json", max_nodes=max_nodes)
        case _:
            raise InvalidArgument(
                "say what to generate: set exactly one of text_to_image, video, "
                "workflow, workflow_json, template",
                [
                    FieldViolation(
                        "input",
                        "exactly one of text_to_image, video, workflow, workflow_json, "
                        "template is required",
                    )
                ],
            )
    return JobSpec(
        kind=kind,
        workflow=graph,
        workflow_sha256=workflow_sha256(graph),
        request_id=request.request_id,
        labels=dict(request.labels),
        front=request.priority == pb.PRIORITY_HIGH,
        retry_on_backend_loss=request.retry_on_backend_loss,
        caller=caller,
        fingerprint=hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest(),
        source_field=which,
        field_map=field_map,
        template=used.name if used else "",
        template_version=used.version if used else 0,
        template_params=values,
        output_nodes=frozenset(used.outputs) if used else frozenset(),
        callback_url=callback_url,
    )

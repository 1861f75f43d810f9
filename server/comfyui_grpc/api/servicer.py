"""The GenerationService servicer: thin; the work is in :mod:`comfyui_grpc.jobs`.

Every method goes through :func:`_guarded` (streams: :func:`_streaming_statuses`),
so a domain error becomes its status with details and anything unexpected
becomes INTERNAL with an incident id, never a bare UNKNOWN.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from ..callbacks.delivery import Deliverer
from ..callbacks.policy import AllowList
from ..errors import FieldViolation, GatewayError, InvalidArgument, NotFound
from ..inputs import InputUploader
from ..jobs.job import Job
from ..jobs.model import JobState
from ..jobs.previews import NodePreview, with_previews
from ..jobs.service import JobService
from ..observability.metrics import Metrics
from ..v1 import generation_service_pb2 as pb
from ..v1 import generation_service_pb2_grpc as pb_grpc
from ..workflows.graph import MAX_WORKFLOW_BYTES
from ..workflows.template_library import TemplateLibrary
from . import convert, template_views
from .callers import caller_of
from .requests import spec_from_request, template_params
from .results import add_presigned_urls
from .status import internal_status, to_status
from .template_images import resolve_images

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_CHUNK = 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 3 * 1024 * 1024
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
DEADLINE_MARGIN_SECONDS = 0.25
DEFAULT_PREVIEW_FPS, MAX_PREVIEW_FPS = 2.0, 10.0


async def _abort(context: Ctx, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def _preview_fps(request: pb.StreamProgressRequest) -> float:
    """The stream's preview rate; INVALID_ARGUMENT outside (0, 10]."""
    if not request.HasField("preview_max_fps"):
        return DEFAULT_PREVIEW_FPS
    fps = request.preview_max_fps
    if not 0 < fps <= MAX_PREVIEW_FPS:  # also false for NaN
        raise InvalidArgument(
            f"preview_max_fps must be above 0 and at most {MAX_PREVIEW_FPS:g}",
            [FieldViolation("preview_max_fps", f"in (0, {MAX_PREVIEW_FPS:g}]; unset means 2")],
        )
    return fps


def _guarded(
    method: Callable[[Any, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Any, Req, Ctx], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except GatewayError as exc:
            await _abort(context, to_status(exc))
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, internal_status(exc, method.__name__))
        raise AssertionError("abort returned")

    return wrapper


@contextlib.asynccontextmanager
async def _streaming_statuses(context: Ctx, name: str) -> AsyncIterator[None]:
    """What :func:`_guarded` does, for a streaming method's body.

    A context manager rather than a wrapping generator: a wrapper would add a
    hop to every message the stream sends.
    """
    try:
        yield
    except GatewayError as exc:
        await _abort(context, to_status(exc))
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        await _abort(context, internal_status(exc, name))


def _seconds(duration: duration_pb2.Duration) -> float:
    """A Duration in seconds; unlike ToTimedelta, never overflows."""
    return duration.seconds + duration.nanos / 1e9


def _time_left(context: Ctx, wanted: float) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return wanted
    return max(0.0, min(wanted, remaining - DEADLINE_MARGIN_SECONDS))


def _find_artifact(job: Job, name: str) -> Any:
    if not name:
        raise InvalidArgument(
            "name the artifact: its key or file name",
            [FieldViolation("artifact", "required: the artifact's key or filename")],
        )
    by_key = [a for a in job.artifacts if a.key == name]
    if by_key:
        return by_key[0]
    by_name = [a for a in job.artifacts if a.filename == name]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise InvalidArgument(
            f"{len(by_name)} artifacts of job {job.job_id} are called {name!r}; use the key",
            [FieldViolation("artifact", "ambiguous file name; pass the artifact's key")],
        )
    raise NotFound(f"job {job.job_id} has no artifact {name!r}", reason="ARTIFACT_NOT_FOUND")


_ORDER = {
    JobState.RUNNING: 0,
    JobState.UPLOADING: 0,
    JobState.QUEUED: 1,
    JobState.SUCCEEDED: 2,
    JobState.FAILED: 2,
    JobState.CANCELLED: 2,
}


def _list_key(job: Job) -> tuple[int, float, float]:
    group = _ORDER[job.state]
    if group == 0:
        return (0, job.start_time or 0.0, 0.0)
    if group == 1:
        # Handed to a backend first (they run sooner), then the gateway's line.
        return (1, 0.0 if job.backend else 1.0, float(job.queue_position))
    return (2, -(job.end_time or 0.0), 0.0)


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(
        self,
        service: JobService,
        uploader: InputUploader,
        *,
        metrics: Metrics,
        max_workflow_nodes: int,
        max_workflow_bytes: int = MAX_WORKFLOW_BYTES,
        token_names: Mapping[str, str] | None = None,
        templates: TemplateLibrary | None = None,
        callback_allow: AllowList | None = None,
        callbacks: Deliverer | None = None,
    ) -> None:
        self.templates = templates or TemplateLibrary()
        self.metrics = metrics
        self.service = service
        self.uploader = uploader
        self.max_workflow_nodes = max_workflow_nodes
        self.max_workflow_bytes = max_workflow_bytes
        self.token_names = dict(token_names or {})
        self.callback_allow = callback_allow or AllowList()
        self.callbacks = callbacks

    @_guarded
    async def Generate(self, request: pb.GenerateRequest, context: Ctx) -> pb.GenerateResponse:
        job_id = str(uuid.uuid4())
        caller = caller_of(context.invocation_metadata(), context.auth_context(), self.token_names)
        template = params = None
        if request.WhichOneof("input") == "template":
            if not request.template.name:
                raise InvalidArgument(
                    "template.name is required: ListTemplates shows the names",
                    [FieldViolation("template.name", "required")],
                )
            template = self.templates.get(request.template.name, request.template.version)
            params = await resolve_images(
                template,
                template_params(request.template.params),
                uploader=self.uploader,
                service=self.service,
            )
        spec = spec_from_request(
            request,
            job_id,
            max_nodes=self.max_workflow_nodes,
            max_bytes=self.max_workflow_bytes,
            caller=caller,
            template=template,
            params=params,
            callback_allow=self.callback_allow,
        )
        job, existing = await self.service.submit(spec, job_id=job_id)
        if self.callbacks is not None and not existing:
            await self.callbacks.register(job)
        return pb.GenerateResponse(
            job_id=job.job_id,
            state=convert.STATES[job.state],
            queue_position=job.queue_position if job.state is JobState.QUEUED else 0,
            deduplicated=existing,
        )

    async def StreamProgress(
        self, request: pb.StreamProgressRequest, context: Ctx
    ) -> AsyncIterator[pb.ProgressEvent]:
        async with _streaming_statuses(context, "StreamProgress"):
            fps = _preview_fps(request)
            job = await self.service.find(request.job_id)
            after = request.after_sequence if request.HasField("after_sequence") else None
            # Snapshot and subscription are taken together, with no await between.
            subscription = job.log.subscribe(
                after_sequence=after, on_coalesce=self.metrics.coalesced_events.inc
            )
            snapshot = convert.snapshot(job)
            self.metrics.active_streams.inc()
            try:
                yield snapshot
                if not request.include_previews:
                    async for event in subscription:
                        yield convert.event(event)
                    return
                merged = with_previews(subscription, job.preview, 1.0 / fps)
                async with self.service.previews_of(job), contextlib.aclosing(merged):
                    async for item in merged:
                        if isinstance(item, NodePreview):
                            yield convert.preview(job, item)
                        else:
                            yield convert.event(item)
            finally:
                subscription.close()
                self.metrics.active_streams.dec()

    @_guarded
    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.CancelJobResponse:
        budget = _time_left(context, self.service.settings.cancel_confirm_seconds)
        job = await self.service.cancel(request.job_id, timeout=budget)
        return pb.CancelJobResponse(job=convert.job(job))

    @_guarded
    async def GetResult(self, request: pb.GetResultRequest, context: Ctx) -> pb.GetResultResponse:
        job = await self.service.find(request.job_id)
        wait = _seconds(request.wait_timeout)
        if wait < 0:
            raise InvalidArgument(
                "wait_timeout must not be negative",
                [FieldViolation("wait_timeout", "must be zero or positive")],
            )
        await self.service.wait(job, _time_left(context, wait))
        if self.callbacks is not None:
            await self.callbacks.refresh(job)
        message = convert.job(job)
        ttl = int(_seconds(request.presign_ttl))
        if ttl:
            if not 0 < ttl <= MAX_PRESIGN_SECONDS:
                raise InvalidArgument(
                    "presign_ttl must be between 1 second and 7 days",
                    [FieldViolation("presign_ttl", "between 1 s and 7 days")],
                )
            await add_presigned_urls(message, self.service.store, ttl)
        return pb.GetResultResponse(job=message)

    @_guarded
    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size must be between 1 and {MAX_PAGE_SIZE}",
                [FieldViolation("page_size", f"between 1 and {MAX_PAGE_SIZE}")],
            )
        states = [convert.STATES_BACK[s] for s in request.states if s in convert.STATES_BACK]
        if len(states) != len([s for s in request.states if s != 0]):
            raise InvalidArgument(
                "states holds an unknown JobState", [FieldViolation("states", "unknown JobState")]
            )
        offset = _page_offset(request.page_token)
        jobs = sorted(await self.service.listed(states), key=_list_key)
        page = jobs[offset : offset + size]
        token = _page_token(offset + size) if offset + size < len(jobs) else ""
        return pb.ListJobsResponse(jobs=[convert.job(j) for j in page], next_page_token=token)

    @_guarded
    async def UploadInput(
        self, request_iterator: AsyncIterator[pb.UploadInputRequest], context: Ctx
    ) -> pb.UploadInputResponse:
        # A malformed stream is answered once the client has sent all of it:
        # a grpcio asyncio client still writing when the server answers reports
        # INTERNAL instead of the server's status (grpc/grpc#36066). Only an
        # upload over the size limit is cut short.
        metadata: pb.UploadInputMetadata | None = None
        problem: InvalidArgument | None = None
        size = 0
        first = True
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            async for part in request_iterator:
                kind = part.WhichOneof("part")
                if first:
                    first = False
                    if kind == "metadata":
                        metadata = part.metadata
                        continue
                    problem = InvalidArgument(
                        "the first UploadInput message must carry metadata",
                        [FieldViolation("metadata", "required in the first message")],
                    )
                elif kind != "chunk" and problem is None:
                    problem = InvalidArgument(
                        "only the first UploadInput message may carry metadata",
                        [FieldViolation("metadata", "allowed in the first message only")],
                    )
                size += len(part.chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise InvalidArgument(
                        f"the upload is larger than {MAX_UPLOAD_BYTES} bytes",
                        [FieldViolation("chunk", f"at most {MAX_UPLOAD_BYTES} bytes in total")],
                        reason="UPLOAD_TOO_LARGE",
                    )
                if problem is None:
                    spool.write(part.chunk)
            if problem is not None:
                raise problem
            if metadata is None:
                raise InvalidArgument(
                    "the upload was empty: send metadata, then the file's bytes",
                    [FieldViolation("metadata", "required")],
                )
            return await self.uploader.upload(metadata, spool, size)

    async def ReadArtifact(
        self, request: pb.ReadArtifactRequest, context: Ctx
    ) -> AsyncIterator[pb.ReadArtifactResponse]:
        async with _streaming_statuses(context, "ReadArtifact"):
            chunk_size = request.chunk_size or DEFAULT_CHUNK
            if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
                raise InvalidArgument(
                    f"chunk_size must be between {MIN_CHUNK} and {MAX_CHUNK}",
                    [FieldViolation("chunk_size", f"between {MIN_CHUNK} and {MAX_CHUNK} bytes")],
                )
            job = await self.service.find(request.job_id)
            found = _find_artifact(job, request.artifact)
            yield pb.ReadArtifactResponse(artifact=convert.artifact(found))
            offset = 0
            async for chunk in self.service.read_artifact(found.key, chunk_size):
                yield pb.ReadArtifactResponse(chunk=chunk, offset=offset)
                offset += len(chunk)

    @_guarded
    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Ctx
    ) -> pb.ListTemplatesResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size must be between 1 and {MAX_PAGE_SIZE}",
                [FieldViolation("page_size", f"between 1 and {MAX_PAGE_SIZE}")],
            )
        offset = _page_offset(request.page_token)
        found = self.templates.all(all_versions=request.all_versions)
        page = found[offset : offset + size]
        inventories = template_views.inventories(self.service.pool)
        return pb.ListTemplatesResponse(
            templates=[template_views.template(t, inventories) for t in page],
            next_page_token=_page_token(offset + size) if offset + size < len(found) else "",
        )

    @_guarded
    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Ctx) -> pb.Template:
        if not request.name:
            raise InvalidArgument(
                "name the template: ListTemplates shows them", [FieldViolation("name", "required")]
            )
        found = self.templates.get(request.name, request.version)
        return template_views.template(found, template_views.inventories(self.service.pool))

    @_guarded
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Ctx
    ) -> pb.ListModelsResponse:
        return template_views.models(template_views.inventories(self.service.pool), request.folder)


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _page_offset(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
        if kind != "o" or offset < 0:
            raise ValueError(token)
    except ValueError:
        raise InvalidArgument(
            "page_token is not one this server issued",
            [FieldViolation("page_token", "use next_page_token from the previous response")],
        ) from None
    return offset

"""The asyncio client.

Three promises shape this module:

* a retried ``Generate`` never makes a second job: every submission carries a
  ``request_id`` (generated here when the caller gives none) and retries reuse
  it, so the gateway answers the first job;
* a dropped progress stream is re-opened with ``after_sequence`` set to the
  last event seen, so callers see every event once, in order;
* every failure surfaces as a typed :class:`~.errors.GenerationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import random
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from . import files
from .credentials import ConnectionConfig, TLSConfig, merge_metadata
from .errors import (
    ChecksumMismatchError,
    DeadlineExceededError,
    GenerationError,
    JobCancelledError,
    JobFailedError,
    RpcError,
    UnavailableError,
    from_rpc_error,
)
from .models import (
    Artifact,
    Job,
    JobState,
    ModelFolder,
    Priority,
    Submission,
    Template,
    UploadedInput,
    VideoFormat,
)
from .progress import Preview, ProgressFollower, ProgressUpdate
from .requests import image_request, template_request, video_request, workflow_request

T = TypeVar("T")

ProgressCallback = Callable[[ProgressUpdate], object]
PreviewCallback = Callable[[Preview], object]
"""Called with each update; may be a plain function or a coroutine function."""

DEFAULT_TIMEOUT = 30.0
DOWNLOAD_CHUNK = 1024 * 1024
UPLOAD_CHUNK = 256 * 1024
RESULT_WAIT_SLICE = 60.0
"""Longest single GetResult wait; long waits are split so idle-connection
timeouts in proxies never see a silent call."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls are retried. UNAVAILABLE and CANCELLED are retried by default:
    each means the gateway did not answer (unreachable, draining, or stopping
    while the call was on its way: a gateway replica that stops cancels the
    calls it had received but not begun), and every retried call is
    idempotent (Generate through its ``request_id``). This client never
    reports its own cancellations as CANCELLED errors (they raise
    :class:`asyncio.CancelledError`), so a CANCELLED status always came from
    the other side."""

    max_attempts: int = 5
    """Tries per call, and consecutive failed re-opens of a progress stream."""
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    )

    def backoff(self, attempt: int, error: RpcError | None = None) -> float:
        """Seconds to wait before try ``attempt + 1``, with jitter; a server's
        RetryInfo hint wins when it asks for longer."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if error is not None and error.retry_delay is not None:
            delay = max(delay, error.retry_delay)
        return delay

    def retries(self, error: GenerationError, attempt: int) -> bool:
        return error.code in self.retry_codes and attempt < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1)


class _Deadline:
    """An absolute deadline shared by all the calls and retries of one operation."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(
                "the operation ran out of time", code=grpc.StatusCode.DEADLINE_EXCEEDED
            )
        return left

    def allows(self, delay: float) -> bool:
        return self.at is None or time.monotonic() + delay < self.at


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


def new_request_id() -> str:
    """A fresh idempotency key (the SDK's prefix helps when reading server logs)."""
    return f"sdk-{uuid.uuid4()}"


def raise_for_job(job: Job) -> Job:
    """Return a job that succeeded; raise the typed error for one that did not."""
    if job.state is JobState.FAILED:
        raise JobFailedError(job)
    if job.state is JobState.CANCELLED:
        raise JobCancelledError(job)
    return job


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: tuple[Job, ...]
    next_page_token: str


class GenerationResult:
    """A finished job plus the client that can fetch its outputs."""

    def __init__(self, job: Job, client: AsyncClient, submission: Submission | None = None) -> None:
        self.job = job
        self.submission = submission
        self._client = client

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return self.job.artifacts

    async def download(self, artifact: Artifact, dest: str | os.PathLike[str]) -> Path:
        """Save one artifact (through ReadArtifact, sha256-verified)."""
        return await self._client.download(artifact, dest)

    async def download_all(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save every artifact into ``directory``; returns the paths in order."""
        target = Path(directory)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        return [await self._client.download(a, target) for a in self.artifacts]

    def __repr__(self) -> str:
        return (
            f"GenerationResult(job_id={self.job_id!r}, state={self.state.name}, "
            f"artifacts={len(self.artifacts)})"
        )


class JobHandle:
    """A submitted job: follow it with :meth:`updates`, then get :meth:`result`."""

    def __init__(self, client: AsyncClient, submission: Submission) -> None:
        self.client = client
        self.submission = submission

    @property
    def job_id(self) -> str:
        return self.submission.job_id

    def updates(self, *, timeout: float | None = None) -> AsyncGenerator[ProgressUpdate, None]:
        """Every event from the start (replayed), then live ones until the end."""
        return self.client.watch(self.job_id, after_sequence=0, timeout=timeout)

    async def result(
        self, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> GenerationResult:
        """Wait for the job to end; raises JobFailedError/JobCancelledError."""
        job = await self.client.wait(self.job_id, timeout=timeout, presign_ttl=presign_ttl)
        return GenerationResult(raise_for_job(job), self.client, self.submission)

    async def cancel(self) -> Job:
        return await self.client.cancel(self.job_id)


class AsyncClient:
    """Async client for ``comfyui_grpc.v1.GenerationService``.

    ``target`` defaults to ``COMFYUI_GRPC_TARGET`` or ``localhost:50051``.
    ``timeout`` is the default deadline of each unary operation, retries
    included; streams have none unless given one. Use as an async context
    manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        config: ConnectionConfig | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        base = config or ConnectionConfig.from_env()
        if tls is True:
            tls_config: TLSConfig | None = TLSConfig()
        elif tls is False:
            tls_config = None
        else:
            tls_config = tls if tls is not None else base.tls
        self.config = ConnectionConfig(
            target=target or base.target,
            tls=tls_config,
            token=token if token is not None else base.token,
            metadata=(*base.metadata, *metadata),
            options=(*base.options, *options),
        )
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._own_channel = channel is None
        self.channel = channel if channel is not None else self.config.aio_channel()
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        self._metadata = self.config.call_metadata()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel connects; raises UnavailableError otherwise."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"could not connect to {self.config.target} within {timeout:g} s",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from None

    # -- plumbing ---------------------------------------------------------------

    def _deadline(self, timeout: float | None, default: float | None = None) -> _Deadline:
        return _Deadline(timeout if timeout is not None else default)

    async def _unary(
        self,
        call: Callable[[float | None], Awaitable[T]],
        deadline: _Deadline,
        retry: RetryPolicy | None = None,
    ) -> tuple[T, int]:
        """Run ``call(timeout)`` with retries; returns the answer and the tries used."""
        policy = retry or self.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call(deadline.remaining()), attempt
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                delay = policy.backoff(attempt, error)
                if not (policy.retries(error, attempt) and deadline.allows(delay)):
                    raise error from exc
            await asyncio.sleep(delay)

    def _md(self, extra: Sequence[tuple[str, str]] | None = None) -> tuple[tuple[str, str], ...]:
        return merge_metadata(self._metadata, extra)

    # -- submitting -------------------------------------------------------------

    async def submit(
        self,
        request: pb.GenerateRequest,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        retry_on_backend_loss: bool | None = None,
        callback_url: str | None = None,
        timeout: float | None = None,
    ) -> Submission:
        """Send Generate; returns once ComfyUI queued the job.

        The request is copied, never changed. Its ``request_id`` (or the given
        one, or a new one) is reused by every retry, so the job exists once.
        ``callback_url``: the gateway POSTs the job there, signed, when it ends
        (see :func:`verify_callback`).
        """
        message = pb.GenerateRequest()
        message.CopyFrom(request)
        if request_id is not None:
            message.request_id = request_id
        if not message.request_id:
            message.request_id = new_request_id()
        if labels:
            message.labels.update(labels)
        if priority is not None:
            message.priority = int(priority)  # type: ignore[assignment]
        if retry_on_backend_loss is not None:
            message.retry_on_backend_loss = retry_on_backend_loss
        if callback_url is not None:
            message.callback.url = callback_url
        response, attempts = await self._unary(
            lambda t: self.stub.Generate(message, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return Submission(
            job_id=response.job_id,
            state=JobState.parse(response.state),
            queue_position=response.queue_position,
            deduplicated=response.deduplicated,
            request_id=message.request_id,
            attempts=attempts,
        )

    async def start(self, request: pb.GenerateRequest, **kwargs: Any) -> JobHandle:
        """Submit and return a handle to follow the job (see :meth:`submit`)."""
        return JobHandle(self, await self.submit(request, **kwargs))

    async def generate(
        self,
        request: pb.GenerateRequest,
        *,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        retry_on_backend_loss: bool | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> GenerationResult:
        """Submit, follow progress to the end, and return the stored outputs.

        ``on_progress`` sees every event once, in order, even across dropped
        connections. ``on_preview`` (sync or async) gets the newest
        intermediate image as it forms, at most ``preview_max_fps`` a second
        (default 2); the ComfyUI must run with a preview method. ``timeout``
        bounds the whole operation. Raises :class:`JobFailedError` /
        :class:`JobCancelledError` when the job does not succeed.
        """
        deadline = _Deadline(timeout)
        submission = await self.submit(
            request,
            request_id=request_id,
            labels=labels,
            priority=priority,
            retry_on_backend_loss=retry_on_backend_loss,
            timeout=_min(deadline.remaining(), self.timeout),
        )
        updates = self.watch(
            submission.job_id,
            after_sequence=0,
            timeout=deadline.remaining(),
            include_previews=on_preview is not None,
            preview_max_fps=preview_max_fps,
        )
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.preview is not None:
                    if on_preview is not None:
                        await _maybe_await(on_preview(update.preview))
                elif on_progress is not None:
                    await _maybe_await(on_progress(update))
        job = await self.get_result(
            submission.job_id,
            presign_ttl=presign_ttl,
            timeout=_min(deadline.remaining(), self.timeout),
        )
        if not job.terminal:  # the stream ended early: fall back to waiting
            job = await self.wait(
                submission.job_id, timeout=deadline.remaining(), presign_ttl=presign_ttl
            )
        return GenerationResult(raise_for_job(job), self, submission)

    async def generate_image(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        width: int = 0,
        height: int = 0,
        steps: int = 0,
        cfg: float | None = None,
        seed: int | None = None,
        sampler: str = "",
        scheduler: str = "",
        checkpoint: str = "",
        batch_size: int = 0,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> GenerationResult:
        """Text to image in one call (see :meth:`generate`); zero/None fields
        take the server's defaults (1024x1024, 20 steps, random seed)."""
        request = image_request(
            prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            cfg=cfg,
            seed=seed,
            sampler=sampler,
            scheduler=scheduler,
            checkpoint=checkpoint,
            batch_size=batch_size,
        )
        return await self.generate(
            request,
            on_progress=on_progress,
            on_preview=on_preview,
            preview_max_fps=preview_max_fps,
            request_id=request_id,
            labels=labels,
            priority=priority,
            presign_ttl=presign_ttl,
            timeout=timeout,
        )

    async def generate_video(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        frames: int = 0,
        fps: float | None = None,
        width: int = 0,
        height: int = 0,
        steps: int = 0,
        cfg: float | None = None,
        seed: int | None = None,
        format: VideoFormat | None = None,
        motion_module: str = "",
        checkpoint: str = "",
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> GenerationResult:
        """Text to video (AnimateDiff) in one call (see :meth:`generate`);
        defaults: 16 frames at 8 fps, 512x512, H.264 MP4."""
        request = video_request(
            prompt,
            negative_prompt=negative_prompt,
            frames=frames,
            fps=fps,
            width=width,
            height=height,
            steps=steps,
            cfg=cfg,
            seed=seed,
            format=format,
            motion_module=motion_module,
            checkpoint=checkpoint,
        )
        return await self.generate(
            request,
            on_progress=on_progress,
            on_preview=on_preview,
            preview_max_fps=preview_max_fps,
            request_id=request_id,
            labels=labels,
            priority=priority,
            presign_ttl=presign_ttl,
            timeout=timeout,
        )

    async def generate_workflow(
        self, graph: Mapping[str, Any] | str, **kwargs: Any
    ) -> GenerationResult:
        """Run a raw ComfyUI API-format workflow (see :meth:`generate`)."""
        return await self.generate(workflow_request(graph), **kwargs)

    async def generate_from_template(
        self,
        name: str,
        version: int = 0,
        *,
        params: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
        **values: Any,
    ) -> GenerationResult:
        """Run a named template (see :meth:`list_templates`) and return its outputs.

        Parameters are keyword arguments (``prompt="a fox", steps=20``), or
        ``params={...}`` for names that clash with this method's own. An image
        parameter takes a :class:`~pathlib.Path` or ``bytes`` (sent inline, at
        most 8 MiB), an :class:`Artifact` of an earlier job, an
        :class:`UploadedInput`, or the ``image`` name ``upload_input``
        returned as a ``str``. ``version`` 0 runs the newest. Mistakes raise
        :class:`InvalidArgumentError` naming ``template.params.<name>``; an
        unknown template or version :class:`NotFoundError`.
        """
        merged = _merge_params(params, values)
        request = await asyncio.to_thread(template_request, name, version, merged)
        return await self.generate(
            request,
            on_progress=on_progress,
            on_preview=on_preview,
            preview_max_fps=preview_max_fps,
            request_id=request_id,
            labels=labels,
            priority=priority,
            presign_ttl=presign_ttl,
            timeout=timeout,
        )

    # -- templates and models ----------------------------------------------------

    async def list_templates(
        self, *, all_versions: bool = False, timeout: float | None = None
    ) -> list[Template]:
        """Every template the gateway serves (built-in and from its templates
        directory), by name, newest version first; ``all_versions`` lists the
        older loaded versions too."""
        found: list[Template] = []
        token = ""
        while True:
            response = await self._templates_page(token, all_versions, timeout)
            found.extend(Template.from_proto(t) for t in response.templates)
            token = response.next_page_token
            if not token:
                return found

    async def _templates_page(
        self, token: str, all_versions: bool, timeout: float | None
    ) -> pb.ListTemplatesResponse:
        request = pb.ListTemplatesRequest(page_token=token, all_versions=all_versions)
        response, _ = await self._unary(
            lambda t: self.stub.ListTemplates(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return response

    async def get_template(
        self, name: str, version: int = 0, *, timeout: float | None = None
    ) -> Template:
        """One template with its parameters (version 0: the newest); raises
        NotFoundError for an unknown name or version."""
        request = pb.GetTemplateRequest(name=name, version=version)
        response, _ = await self._unary(
            lambda t: self.stub.GetTemplate(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return Template.from_proto(response)

    async def list_models(
        self, folder: str = "", *, timeout: float | None = None
    ) -> list[ModelFolder]:
        """The model files the connected backends hold, by folder (only
        ``folder`` when given, e.g. ``loras``), each with the backends that
        have it."""
        request = pb.ListModelsRequest(folder=folder)
        response, _ = await self._unary(
            lambda t: self.stub.ListModels(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return [ModelFolder.from_proto(f) for f in response.folders]

    # -- following ---------------------------------------------------------------

    async def watch(
        self,
        job_id: str,
        *,
        after_sequence: int | None = None,
        resume: bool = True,
        timeout: float | None = None,
        include_previews: bool = False,
        preview_max_fps: float | None = None,
    ) -> AsyncGenerator[ProgressUpdate, None]:
        """Stream a job's progress until its final event.

        The first update is a snapshot. With ``after_sequence`` the events
        after it are replayed first (0: all of them). When the connection
        drops, the stream is re-opened after the last event seen, so no event
        is missed or repeated. Leaving the loop early never cancels the job.
        ``include_previews`` adds ``PREVIEW`` updates (``update.preview``):
        the newest intermediate image, at most ``preview_max_fps`` a second
        (server default 2, at most 10).
        """
        follower = ProgressFollower(job_id, after_sequence)
        deadline = _Deadline(timeout)
        failures = 0
        while True:
            request = pb.StreamProgressRequest(job_id=job_id, include_previews=include_previews)
            if include_previews and preview_max_fps is not None:
                request.preview_max_fps = preview_max_fps
            resume_after = follower.resume_after
            if resume_after is not None:
                request.after_sequence = resume_after
            call = self.stub.StreamProgress(
                request, timeout=deadline.remaining(), metadata=self._md()
            )
            error: RpcError
            try:
                async for event in call:
                    update = follower.accept(event)
                    if update is None:
                        continue
                    failures = 0
                    yield update
                if follower.finished or follower.state.terminal:
                    return
                error = UnavailableError(
                    "the progress stream ended before the job finished",
                    code=grpc.StatusCode.UNAVAILABLE,
                    reason="STREAM_ENDED_EARLY",
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            finally:
                call.cancel()
            failures += 1
            delay = self.retry.backoff(failures, error)
            if not (resume and self.retry.retries(error, failures) and deadline.allows(delay)):
                raise error
            follower.mark_resumed()
            await asyncio.sleep(delay)

    async def get_result(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """The job as it stands, or once terminal when ``wait`` seconds allow.

        With ``presign_ttl`` each artifact carries a presigned GET URL (when
        the store can make one).
        """
        request = pb.GetResultRequest(job_id=job_id)
        if wait:
            request.wait_timeout.CopyFrom(_duration(wait))
        if presign_ttl:
            request.presign_ttl.CopyFrom(_duration(presign_ttl))
        default = None if self.timeout is None else self.timeout + (wait or 0.0)
        response, _ = await self._unary(
            lambda t: self.stub.GetResult(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, default),
        )
        return Job.from_proto(response.job)

    async def wait(
        self, job_id: str, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> Job:
        """Wait (without a stream) until the job is terminal; no limit by default."""
        deadline = _Deadline(timeout)
        while True:
            remaining = deadline.remaining()
            slice_ = RESULT_WAIT_SLICE if remaining is None else min(remaining, RESULT_WAIT_SLICE)
            job = await self.get_result(
                job_id,
                wait=slice_,
                presign_ttl=presign_ttl,
                timeout=_min(deadline.remaining(), slice_ + (self.timeout or DEFAULT_TIMEOUT)),
            )
            if job.terminal:
                return job

    async def result(
        self, job_id: str, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> GenerationResult:
        """Wait for a job by id and return its outputs (raises if it did not succeed)."""
        job = await self.wait(job_id, timeout=timeout, presign_ttl=presign_ttl)
        return GenerationResult(raise_for_job(job), self)

    # -- managing ----------------------------------------------------------------

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Cancel a job (idempotent); returns it as it stands after the cancel."""
        request = pb.CancelJobRequest(job_id=job_id)
        response, _ = await self._unary(
            lambda t: self.stub.CancelJob(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return Job.from_proto(response.job)

    async def list_jobs(
        self,
        states: Iterable[JobState] = (),
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> JobPage:
        """One page of jobs: running, then waiting, then recently finished."""
        request = pb.ListJobsRequest(
            states=[int(s) for s in states],  # type: ignore[misc]
            page_size=page_size,
            page_token=page_token,
        )
        response, _ = await self._unary(
            lambda t: self.stub.ListJobs(request, timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
        )
        return JobPage(tuple(Job.from_proto(j) for j in response.jobs), response.next_page_token)

    async def iter_jobs(
        self, states: Iterable[JobState] = (), *, limit: int | None = None, page_size: int = 0
    ) -> AsyncGenerator[Job, None]:
        """Every job across pages (at most ``limit``)."""
        wanted = tuple(states)
        token, seen = "", 0
        while True:
            page = await self.list_jobs(wanted, page_size=page_size, page_token=token)
            for job in page.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            token = page.next_page_token
            if not token:
                return

    # -- files -------------------------------------------------------------------

    async def upload_input(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        filename: str | None = None,
        subfolder: str = "",
        overwrite: bool = False,
        content_type: str = "",
        timeout: float | None = None,
    ) -> UploadedInput:
        """Upload an input image for image-to-image workflows.

        Not retried: without ``overwrite`` the server renames on a clash, so a
        blind retry could leave a second copy.
        """
        if isinstance(source, bytes):
            if not filename:
                raise ValueError("filename is required when uploading bytes")
            name = filename
        else:
            name = filename or Path(source).name

        async def parts() -> AsyncIterator[pb.UploadInputRequest]:
            yield pb.UploadInputRequest(
                metadata=pb.UploadInputMetadata(
                    filename=name,
                    subfolder=subfolder,
                    overwrite=overwrite,
                    content_type=content_type,
                )
            )
            if isinstance(source, bytes):
                for start in range(0, len(source), UPLOAD_CHUNK):
                    yield pb.UploadInputRequest(chunk=source[start : start + UPLOAD_CHUNK])
                return
            handle = await asyncio.to_thread(open, source, "rb")
            try:
                while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
                    yield pb.UploadInputRequest(chunk=chunk)
            finally:
                handle.close()

        response, _ = await self._unary(
            lambda t: self.stub.UploadInput(parts(), timeout=t, metadata=self._md()),
            self._deadline(timeout, self.timeout),
            retry=NO_RETRY,
        )
        return UploadedInput(
            image=response.image,
            name=response.name,
            subfolder=response.subfolder,
            backends=tuple(response.backends),
            size_bytes=response.size_bytes,
        )

    async def read_artifact(
        self, job_id: str, artifact: str, *, chunk_size: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The bytes of an artifact (by key, or file name when unique), in order."""
        request = pb.ReadArtifactRequest(job_id=job_id, artifact=artifact, chunk_size=chunk_size)
        deadline = _Deadline(timeout)
        call = self.stub.ReadArtifact(request, timeout=deadline.remaining(), metadata=self._md())
        try:
            async for message in call:
                if message.HasField("artifact"):
                    continue
                yield message.chunk
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def download(
        self,
        artifact: Artifact,
        dest: str | os.PathLike[str],
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> Path:
        """Save an artifact through ReadArtifact and verify its size and sha256.

        ``dest`` is a file path, or an existing directory to save into as
        ``JOBID8-filename`` (see :mod:`.files`: the name is reduced to a safe
        base name and numbered when taken, so nothing is overwritten and
        nothing lands outside the directory). The file appears only once
        verified, so a partial or corrupt download never looks like a good
        one. A dropped connection restarts the download.
        """
        target = await asyncio.to_thread(_target, artifact, Path(dest))
        deadline = _Deadline(timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._download_once(artifact, target, chunk_size, deadline)
            except UnavailableError as error:
                delay = self.retry.backoff(attempt, error)
                if not (self.retry.retries(error, attempt) and deadline.allows(delay)):
                    raise
            await asyncio.sleep(delay)

    async def _download_once(
        self, artifact: Artifact, target: _Target, chunk_size: int, deadline: _Deadline
    ) -> Path:
        part = target.part()
        digest = hashlib.sha256()
        size = 0
        handle: IO[bytes] = await asyncio.to_thread(part.open, "wb")
        try:
            async for chunk in self.read_artifact(
                artifact.job_id,
                artifact.key,
                chunk_size=chunk_size,
                timeout=deadline.remaining(),
            ):
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            verify_download(artifact, size, digest.hexdigest())
            return await asyncio.to_thread(target.finish, part)
        except BaseException:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                await asyncio.shield(asyncio.to_thread(part.unlink))
            raise

    async def download_url(
        self, artifact: Artifact, dest: str | os.PathLike[str], *, timeout: float | None = None
    ) -> Path:
        """Save an artifact from its presigned URL (sha256-verified); falls back
        to ReadArtifact when the artifact has no URL."""
        if not artifact.presigned_url:
            return await self.download(artifact, dest, timeout=timeout)
        return await asyncio.to_thread(fetch_url, artifact, Path(dest), timeout or 300.0)


def verify_download(artifact: Artifact, size: int, sha256: str) -> None:
    """Raise ChecksumMismatchError when bytes differ from what the store recorded."""
    if artifact.size_bytes and size != artifact.size_bytes:
        raise ChecksumMismatchError(artifact.key, f"{artifact.size_bytes} bytes", f"{size} bytes")
    if artifact.sha256 and sha256 != artifact.sha256:
        raise ChecksumMismatchError(artifact.key, f"sha256 {artifact.sha256}", f"sha256 {sha256}")


def fetch_url(artifact: Artifact, dest: Path, timeout: float) -> Path:
    """Blocking HTTP GET of a presigned URL into ``dest``, verified like :meth:`download`."""
    import urllib.request

    target = _target(artifact, dest)
    part = target.part()
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            urllib.request.urlopen(artifact.presigned_url, timeout=timeout) as response,
            part.open("wb") as handle,
        ):
            while chunk := response.read(DOWNLOAD_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        verify_download(artifact, size, digest.hexdigest())
        return target.finish(part)
    finally:
        part.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a download goes: a file the caller named (replaced, as asked), or
    a directory, where the artifact gets a new file of its own."""

    directory: Path
    name: str
    into_directory: bool

    def part(self) -> Path:
        return self.directory / f".{self.name}.{uuid.uuid4().hex[:8]}.part"

    def finish(self, part: Path) -> Path:
        if self.into_directory:
            return files.place(part, self.directory, self.name)
        path = self.directory / self.name
        os.replace(part, path)
        return path


def _target(artifact: Artifact, dest: Path) -> _Target:
    if dest.is_dir():
        return _Target(dest, files.job_file_name(artifact.job_id, artifact.filename), True)
    return _Target(dest.parent, dest.name, False)


def _merge_params(params: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """``params=`` and keyword parameters together; a name given twice is a mistake."""
    merged = dict(params or {})
    twice = sorted(set(merged) & set(values))
    if twice:
        raise TypeError(f"template parameter(s) given twice: {', '.join(twice)}")
    merged.update(values)
    return merged


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)

"""The blocking client, for scripts, notebooks and the CLI.

It runs an :class:`~.client.AsyncClient` on a private event-loop thread, so
retries, stream resumption and error mapping exist once. Progress callbacks
and iterators run in the caller's thread, and Ctrl-C (KeyboardInterrupt)
stops the call in flight before it reaches the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from comfyui_grpc.v1 import generation_service_pb2 as pb

from .client import (
    DEFAULT_TIMEOUT,
    AsyncClient,
    JobPage,
    RetryPolicy,
    _Deadline,
    _merge_params,
    _min,
    raise_for_job,
)
from .credentials import ConnectionConfig, TLSConfig
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
from .progress import Preview, ProgressUpdate
from .requests import image_request, template_request, video_request, workflow_request

T = TypeVar("T")

SyncProgressCallback = Callable[[ProgressUpdate], object]
SyncPreviewCallback = Callable[[Preview], object]


class _LoopThread:
    """An event loop on a daemon thread that runs coroutines for the caller."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="comfyui-grpc-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        finished = threading.Event()
        interrupted = threading.Event()
        tasks: list[asyncio.Task[Any]] = []

        async def runner() -> T:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            try:
                if interrupted.is_set():
                    coro.close()
                    raise asyncio.CancelledError
                return await coro
            finally:
                finished.set()

        def cancel() -> None:
            for task in tasks:
                task.cancel()

        future: concurrent.futures.Future[T] | None = None
        try:
            future = asyncio.run_coroutine_threadsafe(runner(), self.loop)
            return future.result()
        except KeyboardInterrupt:
            # Cancel the coroutine and let it unwind (close its RPC) before the
            # caller, e.g. the CLI's "cancel the job?" prompt, uses the client.
            # Ctrl-C can land while the coroutine is being handed over, before
            # there is a future to cancel: the flag and the task cover that.
            interrupted.set()
            if future is not None:
                future.cancel()
            self.loop.call_soon_threadsafe(cancel)
            finished.wait(5.0)
            raise

    def iterate(self, agen: AsyncGenerator[T, None]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(agen)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            self.run(agen.aclose())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        self.loop.close()


class SyncGenerationResult:
    """A finished job plus the client that can fetch its outputs."""

    def __init__(self, job: Job, client: Client, submission: Submission | None = None) -> None:
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

    def download(self, artifact: Artifact, dest: str | os.PathLike[str]) -> Path:
        """Save one artifact (through ReadArtifact, sha256-verified)."""
        return self._client.download(artifact, dest)

    def download_all(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save every artifact into ``directory``; returns the paths in order."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        return [self._client.download(a, directory) for a in self.artifacts]

    def __repr__(self) -> str:
        return (
            f"SyncGenerationResult(job_id={self.job_id!r}, state={self.state.name}, "
            f"artifacts={len(self.artifacts)})"
        )


class SyncJobHandle:
    """A submitted job: iterate :meth:`updates`, then get :meth:`result`."""

    def __init__(self, client: Client, submission: Submission) -> None:
        self.client = client
        self.submission = submission

    @property
    def job_id(self) -> str:
        return self.submission.job_id

    def updates(self, *, timeout: float | None = None) -> Iterator[ProgressUpdate]:
        return self.client.watch(self.job_id, after_sequence=0, timeout=timeout)

    def result(
        self, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> SyncGenerationResult:
        job = self.client.wait(self.job_id, timeout=timeout, presign_ttl=presign_ttl)
        return SyncGenerationResult(raise_for_job(job), self.client, self.submission)

    def cancel(self) -> Job:
        return self.client.cancel(self.job_id)


class Client:
    """Blocking client with the same options and methods as :class:`AsyncClient`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        metadata: Iterable[tuple[str, str]] = (),
        options: Iterable[tuple[str, Any]] = (),
        config: ConnectionConfig | None = None,
    ) -> None:
        self._loop = _LoopThread()
        extra_metadata, extra_options = tuple(metadata), tuple(options)

        async def make() -> AsyncClient:
            return AsyncClient(
                target,
                tls=tls,
                token=token,
                timeout=timeout,
                retry=retry,
                metadata=extra_metadata,
                options=extra_options,
                config=config,
            )

        try:
            self._async = self._loop.run(make())
        except BaseException:
            self._loop.close()
            raise
        self.config = self._async.config
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.run(self._async.close())
        self._loop.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        self._loop.run(self._async.wait_ready(timeout))

    # -- submitting -------------------------------------------------------------

    def submit(
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
        """Send Generate (retried with the same request_id); see AsyncClient.submit."""
        return self._loop.run(
            self._async.submit(
                request,
                request_id=request_id,
                labels=labels,
                priority=priority,
                retry_on_backend_loss=retry_on_backend_loss,
                callback_url=callback_url,
                timeout=timeout,
            )
        )

    def start(self, request: pb.GenerateRequest, **kwargs: Any) -> SyncJobHandle:
        return SyncJobHandle(self, self.submit(request, **kwargs))

    def generate(
        self,
        request: pb.GenerateRequest,
        *,
        on_progress: SyncProgressCallback | None = None,
        on_preview: SyncPreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        retry_on_backend_loss: bool | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> SyncGenerationResult:
        """Submit, follow to the end (``on_progress`` and ``on_preview`` run in
        this thread), and return the outputs; raises JobFailedError/JobCancelledError."""
        deadline = _Deadline(timeout)
        submission = self.submit(
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
        for update in updates:
            if update.preview is not None:
                if on_preview is not None:
                    on_preview(update.preview)
            elif on_progress is not None:
                on_progress(update)
        job = self.wait(submission.job_id, timeout=deadline.remaining(), presign_ttl=presign_ttl)
        return SyncGenerationResult(raise_for_job(job), self, submission)

    def generate_image(
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
        on_progress: SyncProgressCallback | None = None,
        on_preview: SyncPreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> SyncGenerationResult:
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
        return self.generate(
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

    def generate_video(
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
        on_progress: SyncProgressCallback | None = None,
        on_preview: SyncPreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> SyncGenerationResult:
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
        return self.generate(
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

    def generate_workflow(
        self, graph: Mapping[str, Any] | str, **kwargs: Any
    ) -> SyncGenerationResult:
        return self.generate(workflow_request(graph), **kwargs)

    def generate_from_template(
        self,
        name: str,
        version: int = 0,
        *,
        params: Mapping[str, Any] | None = None,
        on_progress: SyncProgressCallback | None = None,
        on_preview: SyncPreviewCallback | None = None,
        preview_max_fps: float | None = None,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: Priority | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
        **values: Any,
    ) -> SyncGenerationResult:
        """Run a named template with keyword parameters (or ``params={...}``);
        see :meth:`AsyncClient.generate_from_template` for what an image
        parameter takes (a ``Path``/``bytes`` is sent inline, an ``Artifact``
        chains an earlier job's output, a ``str`` is an uploaded image name)."""
        request = template_request(name, version, _merge_params(params, values))
        return self.generate(
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

    def list_templates(
        self, *, all_versions: bool = False, timeout: float | None = None
    ) -> list[Template]:
        """Every template the gateway serves, newest version of each first."""
        return self._loop.run(
            self._async.list_templates(all_versions=all_versions, timeout=timeout)
        )

    def get_template(
        self, name: str, version: int = 0, *, timeout: float | None = None
    ) -> Template:
        """One template with its parameters (version 0: the newest)."""
        return self._loop.run(self._async.get_template(name, version, timeout=timeout))

    def list_models(self, folder: str = "", *, timeout: float | None = None) -> list[ModelFolder]:
        """The model files the backends hold, by folder (only ``folder`` when given)."""
        return self._loop.run(self._async.list_models(folder, timeout=timeout))

    # -- following and managing --------------------------------------------------

    def watch(
        self,
        job_id: str,
        *,
        after_sequence: int | None = None,
        resume: bool = True,
        timeout: float | None = None,
        include_previews: bool = False,
        preview_max_fps: float | None = None,
    ) -> Iterator[ProgressUpdate]:
        """Progress updates until the job's final event (see AsyncClient.watch)."""
        return self._loop.iterate(
            self._async.watch(
                job_id,
                after_sequence=after_sequence,
                resume=resume,
                timeout=timeout,
                include_previews=include_previews,
                preview_max_fps=preview_max_fps,
            )
        )

    def get_result(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        presign_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        return self._loop.run(
            self._async.get_result(job_id, wait=wait, presign_ttl=presign_ttl, timeout=timeout)
        )

    def wait(
        self, job_id: str, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> Job:
        return self._loop.run(self._async.wait(job_id, timeout=timeout, presign_ttl=presign_ttl))

    def result(
        self, job_id: str, *, timeout: float | None = None, presign_ttl: float | None = None
    ) -> SyncGenerationResult:
        job = self.wait(job_id, timeout=timeout, presign_ttl=presign_ttl)
        return SyncGenerationResult(raise_for_job(job), self)

    def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        return self._loop.run(self._async.cancel(job_id, timeout=timeout))

    def list_jobs(
        self,
        states: Iterable[JobState] = (),
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> JobPage:
        return self._loop.run(
            self._async.list_jobs(
                tuple(states), page_size=page_size, page_token=page_token, timeout=timeout
            )
        )

    def iter_jobs(
        self, states: Iterable[JobState] = (), *, limit: int | None = None, page_size: int = 0
    ) -> Iterator[Job]:
        return self._loop.iterate(
            self._async.iter_jobs(tuple(states), limit=limit, page_size=page_size)
        )

    # -- files -------------------------------------------------------------------

    def upload_input(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        filename: str | None = None,
        subfolder: str = "",
        overwrite: bool = False,
        content_type: str = "",
        timeout: float | None = None,
    ) -> UploadedInput:
        return self._loop.run(
            self._async.upload_input(
                source,
                filename=filename,
                subfolder=subfolder,
                overwrite=overwrite,
                content_type=content_type,
                timeout=timeout,
            )
        )

    def read_artifact(
        self, job_id: str, artifact: str, *, chunk_size: int = 0, timeout: float | None = None
    ) -> Iterator[bytes]:
        return self._loop.iterate(
            self._async.read_artifact(job_id, artifact, chunk_size=chunk_size, timeout=timeout)
        )

    def download(
        self,
        artifact: Artifact,
        dest: str | os.PathLike[str],
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> Path:
        return self._loop.run(
            self._async.download(artifact, dest, chunk_size=chunk_size, timeout=timeout)
        )

    def download_url(
        self, artifact: Artifact, dest: str | os.PathLike[str], *, timeout: float | None = None
    ) -> Path:
        return self._loop.run(self._async.download_url(artifact, dest, timeout=timeout))

"""Copying a finished job's outputs from ComfyUI into the artifact store.

Each file streams from ``/view`` straight into the store (multipart above the
store's threshold), so no output is ever held in memory whole. A broken
download is retried from the start; the store retries its own transient
failures. The job succeeds only once every file and the manifest are stored.

ComfyUI is not trusted to send a file of reasonable size: a file larger than
``max_output_bytes`` (by its Content-Length, or counted as it streams, for an
endless body) fails the job with ``OUTPUT_TOO_LARGE`` at once, and the
store's ``put_stream`` removes whatever part of it was written.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections.abc import AsyncIterator

import httpx

from ..comfyui.client import ComfyUIClient
from ..comfyui.errors import ComfyUIUnavailable
from ..observability.metrics import Metrics
from ..storage import ArtifactStore, StorageError, StoredObject
from .job import Job
from .manifest import write_manifest
from .model import Artifact, FailureReason, JobFailure, OutputFile

log = logging.getLogger(__name__)

DOWNLOAD_BUDGET_SECONDS = 60.0
CHUNK_BYTES = 1024 * 1024
MAX_OUTPUT_BYTES = 8 * 1024 * 1024 * 1024
"""Default cap on one output file (``--max-output-bytes``)."""


class OutputTooLarge(Exception):
    """ComfyUI offered (or kept sending) more than the gateway stores for one file."""


async def _capped(chunks: AsyncIterator[bytes], limit: int, filename: str) -> AsyncIterator[bytes]:
    """``chunks``, raising :class:`OutputTooLarge` as soon as they pass ``limit`` bytes."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise OutputTooLarge(
                f"output {filename!r} is larger than the {limit}-byte limit (--max-output-bytes)"
            )
        yield chunk


def content_type_for(filename: str, header: str | None) -> str:
    if header and header.split(";")[0].strip() not in ("", "application/octet-stream"):
        return header.split(";")[0].strip()
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


class ArtifactCollector:
    def __init__(
        self, store: ArtifactStore, metrics: Metrics, *, max_output_bytes: int = MAX_OUTPUT_BYTES
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_output_bytes = max_output_bytes

    async def _copy(self, client: ComfyUIClient, job: Job, output: OutputFile) -> StoredObject:
        """Stream one output into the store, retrying a broken download.

        ComfyUI keeps its outputs on disk, so a download is retried with
        back-off for up to ``DOWNLOAD_BUDGET_SECONDS`` (a burst of errors or a
        ComfyUI restart must not fail a finished job); a 4xx answer means
        the file is not there and fails at once.
        """
        key = self.store.artifact_key(job.job_id, output.node_id, output.filename)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DOWNLOAD_BUDGET_SECONDS
        delay = 0.2
        while True:
            try:
                async with client.view(
                    filename=output.filename, subfolder=output.subfolder, type=output.type
                ) as response:
                    content_type = content_type_for(
                        output.filename, response.headers.get("content-type")
                    )
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self.max_output_bytes:
                        raise OutputTooLarge(
                            f"output {output.filename!r} is {declared} bytes, over the "
                            f"{self.max_output_bytes}-byte limit (--max-output-bytes)"
                        )
                    chunks = _capped(
                        response.aiter_bytes(CHUNK_BYTES), self.max_output_bytes, output.filename
                    )
                    return await self.store.put_stream(key, chunks, content_type=content_type)
            except (ComfyUIUnavailable, httpx.HTTPError, OSError) as exc:
                missing = isinstance(exc, ComfyUIUnavailable) and 400 <= exc.status < 500
                if missing or loop.time() + delay > deadline:
                    raise ComfyUIUnavailable(
                        f"could not download {output.filename!r} from ComfyUI: {exc}",
                        status=exc.status if isinstance(exc, ComfyUIUnavailable) else 0,
                    ) from exc
                log.warning(
                    "download of %s failed (%s); retrying",
                    output.filename,
                    exc,
                    extra=job.log_context,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def collect(self, client: ComfyUIClient, job: Job) -> None:
        """Store every output of ``job`` and its manifest, then mark it SUCCEEDED.

        On failure the job ends FAILED; its files stay in ComfyUI.
        """
        try:
            for files in list(job.outputs.values()):
                for output in files:
                    started = time.perf_counter()
                    stored = await self._copy(client, job, output)
                    self.metrics.upload_busy_seconds.inc(time.perf_counter() - started)
                    self.metrics.uploaded_bytes.inc(stored.size_bytes)
                    job.artifact_stored(
                        Artifact(
                            node_id=output.node_id,
                            filename=output.filename,
                            key=stored.key,
                            uri=stored.uri,
                            content_type=stored.content_type,
                            size_bytes=stored.size_bytes,
                            sha256=stored.sha256,
                            animated=output.animated,
                        )
                    )
            await write_manifest(self.store, job, final_state="succeeded")
        except OutputTooLarge as exc:
            job.failed(
                JobFailure(
                    reason=FailureReason.OUTPUT_TOO_LARGE,
                    message=f"{exc}; nothing of it was stored. The file is still in ComfyUI.",
                )
            )
            return
        except (StorageError, ComfyUIUnavailable) as exc:
            reason = FailureReason.STORAGE_FAILED
            if isinstance(exc, ComfyUIUnavailable):
                reason = FailureReason.OUTPUT_MISSING
            job.failed(
                JobFailure(
                    reason=reason,
                    message=f"storing the outputs failed: {exc}. The files are still in ComfyUI.",
                )
            )
            return
        job.succeeded()

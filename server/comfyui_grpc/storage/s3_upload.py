"""Multipart upload of a stream: one part on the wire while the next one fills.

At most two parts are held at once (the one uploading and the one filling),
so memory stays near ``first_part_size + part_size`` whatever the object's
size. Parts are
handed to the HTTP client as ``BytesIO`` bodies, which it sends in small
pieces; a ``bytes`` body would be copied whole, more than once, on the way to
the socket. A failed upload is aborted so that no orphan parts stay behind.
Each part's body is signed with its sha256 (see ``S3ArtifactStore``), so the
store refuses a part garbled on the way.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .errors import StorageError, StorageRejected

log = logging.getLogger(__name__)

Request = Callable[..., Awaitable[dict[str, Any]]]
"""``request(what, operation, *, rewind=None, **params)``: one S3 call with retries."""


class PartCutter:
    """Cuts a stream into bodies of ``first_part_size`` bytes, then ``part_size`` each.

    The last body may be short. A larger first part lets the start of a
    stream double as a whole single-PUT body until the stream proves longer,
    without being copied again. A part is started only when its first byte
    arrives, i.e. after the caller has handed the previous part on and
    waited for the one before it.
    """

    def __init__(self, part_size: int, *, first_part_size: int | None = None) -> None:
        self._part_size = part_size
        self._size = first_part_size or part_size
        self._part: io.BytesIO | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[io.BytesIO]:
        """Copies ``data`` into parts, yielding each part as it fills up."""
        view = memoryview(data)
        while view:
            if self._part is None:
                self._part = io.BytesIO()
            room = self._size - self._part.tell()
            self._part.write(view[:room])
            view = view[room:]
            if self._part.tell() == self._size:
                full, self._part = self._part, None
                self._size = self._part_size
                yield full

    def rest(self) -> io.BytesIO | None:
        """The last, partly filled part, if any bytes are left."""
        part, self._part = self._part, None
        return part


class MultipartUpload:
    """One multipart upload in progress; parts are sent strictly one after another."""

    def __init__(self, request: Request, *, bucket: str, key: str, upload_id: str) -> None:
        self._request = request
        self._bucket = bucket
        self._key = key
        self.upload_id = upload_id
        self._parts: list[dict[str, Any]] = []
        self._pending: asyncio.Task[dict[str, Any]] | None = None
        self._next_number = 1

    @property
    def parts_started(self) -> int:
        return self._next_number - 1

    def _what(self, operation: str) -> str:
        return f"S3 {operation} of s3://{self._bucket}/{self._key}"

    async def send(self, body: io.BytesIO) -> None:
        """Waits for the previous part to land, then starts uploading ``body``."""
        await self.wait()
        number = self._next_number
        self._next_number += 1
        self._pending = asyncio.create_task(self._upload_part(number, body))

    async def _upload_part(self, number: int, body: io.BytesIO) -> dict[str, Any]:
        response = await self._request(
            self._what(f"UploadPart {number}"),
            "upload_part",
            rewind=body,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"ETag": response["ETag"], "PartNumber": number}

    def failed(self) -> bool:
        """True once the part in flight has failed, so the caller can stop reading early."""
        pending = self._pending
        if pending is None or not pending.done() or pending.cancelled():
            return False
        return pending.exception() is not None

    async def wait(self) -> None:
        """Waits for the part in flight; its error (after retries) propagates."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._parts.append(await pending)

    async def complete(self) -> None:
        await self.wait()
        await self._request(
            self._what("CompleteMultipartUpload"),
            "complete_multipart_upload",
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self, cause: BaseException) -> None:
        """Stops the part in flight and aborts the upload, with retries.

        Never raises (the caller is already failing with ``cause``); if the
        store stays unreachable the upload id is logged and noted on ``cause``.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        try:
            await self._request(
                self._what("AbortMultipartUpload"),
                "abort_multipart_upload",
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self.upload_id,
            )
        except StorageRejected as exc:
            if exc.code != "NoSuchUpload":
                self._report_orphan(cause, exc)
        except StorageError as exc:
            self._report_orphan(cause, exc)
        else:
            log.info("aborted multipart upload of s3://%s/%s", self._bucket, self._key)

    def _report_orphan(self, cause: BaseException, exc: StorageError) -> None:
        message = (
            f"could not abort multipart upload {self.upload_id} of "
            f"s3://{self._bucket}/{self._key} ({exc}); its parts stay until a "
            "lifecycle rule (AbortIncompleteMultipartUpload) removes them"
        )
        log.error("%s", message)
        cause.add_note(message)

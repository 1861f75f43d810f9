"""The S3 artifact store (AWS, RustFS, MinIO), through one aioboto3 client.

botocore's own retries are switched off so that every request follows one
retry policy (``retry.retrying``) with logging and a clear final error.
Payload signing is on for http and https alike: every PUT and part carries
its body's sha256 in the signature, which the store checks before it keeps
a byte, so no separate Content-MD5 pass is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any

import aioboto3
from aiobotocore.config import AioConfig

from .base import ArtifactStore, check_chunk_size, check_ttl
from .content_types import DEFAULT_CONTENT_TYPE
from .errors import ObjectNotFound, StorageError, StorageRejected, StorageUnavailable
from .objects import StoredObject
from .retry import Classifier, describe, retrying
from .s3_errors import Failure, classify, error_code, explain
from .s3_upload import MultipartUpload, PartCutter
from .settings import S3Settings

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"
"""Sent as ``x-amz-meta-sha256`` with single PUTs so that ``head`` can report the hash."""
GET_BYTES_LIMIT = 64 * 1024 * 1024
"""``get_bytes`` is for manifests; anything larger must be streamed."""
CHECK_TIMEOUT_SECONDS = 5.0
"""A health probe must answer quickly, whatever the request timeouts are."""


class S3ArtifactStore(ArtifactStore):
    """Stores artifacts in one bucket under a key prefix."""

    def __init__(self, settings: S3Settings) -> None:
        super().__init__(settings.prefix)
        self._settings = settings
        self._policy = settings.retry_policy()
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def settings(self) -> S3Settings:
        return self._settings

    @property
    def location(self) -> str:
        endpoint = self._settings.endpoint_url or "AWS"
        return f"s3://{self._settings.bucket}/{self.prefix} at {endpoint}"

    def _config(self) -> AioConfig:
        s = self._settings
        return AioConfig(
            region_name=s.region,
            signature_version="s3v4",
            s3={
                "addressing_style": "path" if s.path_style else "auto",
                "payload_signing_enabled": True,
            },
            # S3-compatible servers reject the newer default checksum headers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=s.connect_timeout_seconds,
            read_timeout=s.read_timeout_seconds,
            max_pool_connections=s.max_pool_connections,
        )

    async def start(self) -> None:
        if self._client is not None:
            return
        s = self._settings
        session = aioboto3.Session(
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            region_name=s.region,
        )
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.client("s3", endpoint_url=s.endpoint_url, config=self._config())
            )
        except Exception as exc:
            await stack.aclose()
            raise StorageRejected(
                f"cannot set up the S3 client for {self.location}: {explain(exc)}"
            ) from exc
        self._stack = stack
        log.info("artifact store: %s", self.location)
        if s.create_bucket:
            try:
                await self._ensure_bucket()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise StorageUnavailable("the S3 artifact store is not started")
        return self._client

    def _uri(self, key: str) -> str:
        return f"s3://{self._settings.bucket}/{key}"

    def _classifier(self, what: str, missing: str | None) -> Classifier:
        def decide(exc: Exception) -> StorageError | None:
            failure = classify(exc)
            if failure is Failure.TRANSIENT:
                return None
            if failure is Failure.FOREIGN:
                raise exc
            if failure is Failure.NOT_FOUND and missing is not None:
                return ObjectNotFound(missing)
            return StorageRejected(f"{what} was refused: {explain(exc)}", code=error_code(exc))

        return decide

    async def _request(
        self,
        what: str,
        operation: str,
        *,
        missing: str | None = None,
        rewind: IO[bytes] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """One S3 call with retries; ``missing`` is the message for a 404.

        ``rewind`` is the request body, sent again from its start on each try.
        """
        method = getattr(self._require_client(), operation)

        async def call() -> dict[str, Any]:
            if rewind is not None:
                rewind.seek(0)
            response: dict[str, Any] = await method(**params)
            return response

        return await retrying(
            call, what=what, policy=self._policy, classify=self._classifier(what, missing)
        )

    async def _ensure_bucket(self) -> None:
        bucket = self._settings.bucket
        try:
            await self._request(
                f"S3 HeadBucket {bucket}", "head_bucket", missing="no bucket", Bucket=bucket
            )
            return
        except ObjectNotFound:
            pass
        params: dict[str, Any] = {"Bucket": bucket}
        if self._settings.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self._settings.region}
        try:
            await self._request(f"S3 CreateBucket {bucket}", "create_bucket", **params)
        except StorageRejected as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        log.info("created bucket %s", bucket)

    async def check(self) -> None:
        client = self._require_client()
        bucket = self._settings.bucket
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await client.head_bucket(Bucket=bucket)
        except Exception as exc:
            failure = classify(exc)
            if failure is Failure.FOREIGN:
                raise
            reason = {"404": "the bucket does not exist", "403": "access denied"}.get(
                error_code(exc), explain(exc)
            )
            raise StorageUnavailable(f"S3 bucket {self.location} is not usable: {reason}") from exc

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        """Streams ``chunks`` into one object: a single PUT up to the threshold, else parts.

        The first part is as large as the threshold, so the stream's start is
        held once and becomes either the whole PUT body or part 1. The sha256
        is sent as metadata on a single PUT; a multipart object's hash is only
        known once its parts are stored, and it is kept in the job manifest
        rather than rewriting the object with a server-side copy. The store
        checks each signed body as it arrives; an assembled multipart object
        is then checked once more by size.
        """
        self.validate_key(key)
        self._require_client()
        threshold = self._settings.multipart_threshold_bytes
        part_size = self._settings.part_size_bytes
        hasher = hashlib.sha256()
        size = 0
        cutter = PartCutter(part_size, first_part_size=max(threshold, part_size))
        held: io.BytesIO | None = None  # a full first part while the object may fit one PUT
        upload: MultipartUpload | None = None
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                if upload is None and size > threshold:
                    upload = await self._create_multipart(key, content_type)
                    if held is not None:
                        await upload.send(held)
                        held = None
                for part in cutter.feed(chunk):
                    if upload is None:
                        held = part  # only the first part, exactly ``threshold`` bytes
                    else:
                        await upload.send(part)
                if upload is not None and upload.failed():
                    await upload.wait()  # raises the part's error without reading further
            sha256 = hasher.hexdigest()
            if upload is None:
                body = held or cutter.rest() or io.BytesIO()
                await self._put_object(key, body, content_type, sha256)
            else:
                rest = cutter.rest()
                if rest is not None or upload.parts_started == 0:
                    await upload.send(rest or io.BytesIO())
                await self._complete(upload, key, size)
        except BaseException as exc:
            if upload is not None:
                await upload.abort(exc)
            raise
        stored = StoredObject(
            key=key,
            uri=self._uri(key),
            size_bytes=size,
            sha256=sha256,
            content_type=content_type,
        )
        if upload is not None:
            try:
                await self._verify(stored)
            except BaseException:
                await self._discard(key)
                raise
        return stored

    async def _create_multipart(self, key: str, content_type: str) -> MultipartUpload:
        bucket = self._settings.bucket
        response = await self._request(
            f"S3 CreateMultipartUpload of {self._uri(key)}",
            "create_multipart_upload",
            Bucket=bucket,
            Key=key,
            ContentType=content_type,
        )
        return MultipartUpload(
            self._request, bucket=bucket, key=key, upload_id=str(response["UploadId"])
        )

    async def _complete(self, upload: MultipartUpload, key: str, size: int) -> None:
        try:
            await upload.complete()
        except StorageRejected as exc:
            # A retried Complete whose first try landed but whose answer was lost.
            if exc.code != "NoSuchUpload":
                raise
            try:
                found = await self.head(key)
            except ObjectNotFound:
                raise exc from None
            if found.size_bytes != size:
                raise

    async def _put_object(self, key: str, body: io.BytesIO, content_type: str, sha256: str) -> None:
        await self._request(
            f"S3 PutObject of {self._uri(key)}",
            "put_object",
            rewind=body,
            Bucket=self._settings.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            Metadata={SHA256_METADATA: sha256},
        )

    async def _verify(self, stored: StoredObject) -> None:
        """Checks that the assembled object has the size that was streamed."""
        found = await self.head(stored.key)
        if found.size_bytes != stored.size_bytes or (
            found.sha256 and found.sha256 != stored.sha256
        ):
            raise StorageError(
                f"{stored.uri} was stored as {found.size_bytes} bytes (sha256 "
                f"{found.sha256 or '?'}), not the {stored.size_bytes} bytes (sha256 "
                f"{stored.sha256}) sent"
            )

    async def _discard(self, key: str) -> None:
        """Best-effort removal of an object that failed after it was written."""
        try:
            await self.delete(key)
        except StorageError as exc:
            log.error("could not remove unverified object %s: %s", self._uri(key), exc)

    async def get_bytes(self, key: str) -> bytes:
        self.validate_key(key)
        client = self._require_client()
        what = f"S3 GetObject of {self._uri(key)}"

        async def fetch() -> bytes:
            response = await client.get_object(Bucket=self._settings.bucket, Key=key)
            body = response["Body"]
            async with body:
                if int(response.get("ContentLength", 0)) > GET_BYTES_LIMIT:
                    raise StorageError(f"{self._uri(key)} is too large to read whole; stream it")
                data: bytes = await body.read()
            return data

        return await retrying(
            fetch,
            what=what,
            policy=self._policy,
            classify=self._classifier(what, f"no object {key!r}"),
        )

    async def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Streams the object; a connection lost mid-way resumes with a ranged GET."""
        check_chunk_size(chunk_size)
        self.validate_key(key)
        what = f"S3 GetObject of {self._uri(key)}"
        offset = 0
        etag: str | None = None
        total: int | None = None
        broken = 0
        while total is None or offset < total:
            params: dict[str, Any] = {"Bucket": self._settings.bucket, "Key": key}
            if etag is not None:
                # Resume the same version of the object where the last try stopped.
                params.update(Range=f"bytes={offset}-", IfMatch=etag)
            response = await self._request(
                what, "get_object", missing=f"no object {key!r}", **params
            )
            if etag is None:
                etag = str(response.get("ETag", "")) or None
                total = int(response.get("ContentLength", 0))
            body = response["Body"]
            try:
                async with body:
                    async for chunk in _reblock(body, chunk_size):
                        offset += len(chunk)
                        yield chunk
                return
            except Exception as exc:
                if classify(exc) is not Failure.TRANSIENT:
                    raise
                broken += 1
                if broken >= self._policy.max_attempts or etag is None:
                    raise StorageUnavailable(
                        f"{what} broke off {broken} times; last error: {describe(exc)}"
                    ) from exc
                pause = self._policy.delay(broken)
                log.warning(
                    "storage retry: %s broke off at byte %d: %s; resuming in %.2fs",
                    what,
                    offset,
                    describe(exc),
                    pause,
                )
                await asyncio.sleep(pause)

    async def head(self, key: str) -> StoredObject:
        self.validate_key(key)
        response = await self._request(
            f"S3 HeadObject of {self._uri(key)}",
            "head_object",
            missing=f"no object {key!r}",
            Bucket=self._settings.bucket,
            Key=key,
        )
        metadata = response.get("Metadata") or {}
        return StoredObject(
            key=key,
            uri=self._uri(key),
            size_bytes=int(response.get("ContentLength", 0)),
            sha256=str(metadata.get(SHA256_METADATA, "")),
            content_type=str(response.get("ContentType") or DEFAULT_CONTENT_TYPE),
        )

    async def presign_get(self, key: str, ttl_seconds: int) -> str | None:
        check_ttl(ttl_seconds)
        self.validate_key(key)
        client = self._require_client()
        try:
            url: str = await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._settings.bucket, "Key": key},
                ExpiresIn=ttl_seconds,
            )
        except Exception as exc:
            if classify(exc) is Failure.FOREIGN:
                raise
            raise StorageRejected(f"cannot presign {self._uri(key)}: {explain(exc)}") from exc
        return url

    async def delete(self, key: str) -> None:
        self.validate_key(key)
        await self._request(
            f"S3 DeleteObject of {self._uri(key)}",
            "delete_object",
            Bucket=self._settings.bucket,
            Key=key,
        )


async def _reblock(body: Any, chunk_size: int) -> AsyncIterator[bytes]:
    """Re-cuts a body into ``chunk_size`` pieces (the network hands out any size)."""
    pending = bytearray()
    while True:
        piece: bytes = await body.read(chunk_size - len(pending))
        if not piece:
            break
        pending += piece
        if len(pending) >= chunk_size:
            with memoryview(pending) as view:
                chunk = bytes(view[:chunk_size])
            del pending[:chunk_size]
            yield chunk
    if pending:
        yield bytes(pending)

"""What the S3 store puts on the wire to keep artifacts intact, seen through an HTTP tap.

moto does not check ``x-amz-content-sha256`` against the body (AWS, RustFS
and MinIO do), so the signed-payload guarantee is checked where it is made:
each body the store sends carries its own sha256 in a signed header. The
size check after a multipart upload is checked by making the server assemble
less than was sent while answering success, as a store that lost a part would.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

import pytest
from comfyui_grpc.storage import ObjectNotFound, S3ArtifactStore, StorageError
from storage_helpers import MiB, open_uploads, s3_settings
from storage_media import blob, chunked
from support.s3 import HttpRequest, HttpTapProxy

JOB = "job-integrity"
PART_ELEMENT = re.compile(rb"<Part>.*?</Part>", re.DOTALL)


def is_object_upload(request: HttpRequest) -> bool:
    """PutObject or UploadPart (path-style: ``/bucket/key``), not CreateBucket."""
    return request.method == "PUT" and request.path.count("/") >= 2


def signed_headers(request: HttpRequest) -> set[str]:
    authorization = request.header("Authorization") or ""
    match = re.search(r"SignedHeaders=([^,\s]+)", authorization)
    assert match is not None, f"unsigned request: {authorization!r}"
    return set(match.group(1).split(";"))


def drop_last_part(request: HttpRequest) -> HttpRequest:
    """Leaves the last part out of a CompleteMultipartUpload, so a shorter object is built."""
    if request.method != "POST" or "uploadId=" not in request.query:
        return request
    parts = PART_ELEMENT.findall(request.body)
    assert len(parts) >= 2, request.body
    body = request.body.replace(parts[-1], b"")
    headers = tuple((k, v) for k, v in request.headers if k.lower() != "content-md5")
    return replace(request, headers=headers, body=body)


async def test_every_put_and_part_is_signed_with_its_bodys_sha256(tap: HttpTapProxy) -> None:
    small = blob(300_000, seed=11)
    large = blob(11 * MiB + 3, seed=12)
    async with S3ArtifactStore(s3_settings(tap.endpoint)) as store:
        await store.put_bytes(
            store.artifact_key(JOB, "9", "a.png"), small, content_type="image/png"
        )
        await store.put_stream(
            store.artifact_key(JOB, "12", "b.mp4"), chunked(large, MiB), content_type="video/mp4"
        )
    uploads = [request for request in tap.requests if is_object_upload(request)]
    parts = [request for request in uploads if "partNumber=" in request.query]
    # One PutObject, then parts of 5 MiB, 5 MiB and the rest.
    assert [len(request.body) for request in uploads] == [len(small), 5 * MiB, 5 * MiB, MiB + 3]
    assert len(parts) == 3
    for request in uploads:
        assert request.header("x-amz-content-sha256") == hashlib.sha256(request.body).hexdigest()
        assert "x-amz-content-sha256" in signed_headers(request)


async def test_multipart_object_assembled_short_is_refused_and_removed(
    tap: HttpTapProxy, raw_s3: Any
) -> None:
    data = blob(11 * MiB + 3, seed=13)
    tap.rewrite = drop_last_part
    async with S3ArtifactStore(s3_settings(tap.endpoint)) as store:
        key = store.artifact_key(JOB, "12", "video.mp4")
        with pytest.raises(StorageError, match=f"stored as {10 * MiB} bytes") as failure:
            await store.put_stream(key, chunked(data, MiB), content_type="video/mp4")
        assert f"not the {len(data)} bytes" in str(failure.value)
        assert hashlib.sha256(data).hexdigest() in str(failure.value)
        completes = [r for r in tap.requests if r.method == "POST" and "uploadId=" in r.query]
        assert len(completes) == 1  # accepted at once: moto built the short object
        with pytest.raises(ObjectNotFound):
            await store.head(key)
        assert await open_uploads(raw_s3, store.settings.bucket) == []

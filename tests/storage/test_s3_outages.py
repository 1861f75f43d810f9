"""The S3 store through outages, made by a TCP proxy that resets connections like a real network."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from comfyui_grpc.storage import (
    ObjectNotFound,
    S3ArtifactStore,
    StorageRejected,
    StorageUnavailable,
)
from storage_helpers import FaultProxy, LogTrigger, MiB, open_uploads, s3_settings
from storage_media import blob, chunked

JOB = "job-outage"


def through(proxy: FaultProxy, **overrides: Any) -> S3ArtifactStore:
    return S3ArtifactStore(s3_settings(proxy.endpoint, **overrides))


async def cut_after(data: bytes, nbytes: int, action: Callable[[], None]) -> AsyncIterator[bytes]:
    """Streams ``data`` in 1 MiB chunks, calling ``action`` once ``nbytes`` are handed over."""
    sent = 0
    async for chunk in chunked(data, MiB):
        yield chunk
        sent += len(chunk)
        if sent == nbytes:
            action()


async def test_upload_survives_an_outage_mid_multipart(
    proxy: FaultProxy, raw_s3: Any, log_trigger: Callable[..., LogTrigger]
) -> None:
    data = blob(17 * MiB + 5, seed=1)
    async with through(proxy, max_attempts=8) as store:
        # The store comes back after the store has failed three times in a row.
        retries = log_trigger("storage retry", proxy.go_up, times=3)
        key = store.artifact_key(JOB, "12", "video.mp4")
        stored = await store.put_stream(
            key, cut_after(data, 7 * MiB, proxy.go_down), content_type="video/mp4"
        )
        assert retries.seen >= 3
        assert proxy.refused >= 1
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert await store.get_bytes(key) == data
        assert await open_uploads(raw_s3, store.settings.bucket) == []


async def test_single_put_survives_a_short_outage(
    proxy: FaultProxy, log_trigger: Callable[..., LogTrigger]
) -> None:
    data = blob(300_000, seed=2)
    async with through(proxy) as store:
        log_trigger("storage retry", proxy.go_up, times=2)
        key = store.artifact_key(JOB, "9", "image.png")
        proxy.go_down()
        await store.put_bytes(key, data, content_type="image/png")
        assert await store.get_bytes(key) == data


async def test_outage_outlasting_retries_fails_clearly_and_aborts_the_upload(
    proxy: FaultProxy, raw_s3: Any, log_trigger: Callable[..., LogTrigger]
) -> None:
    data = blob(17 * MiB, seed=3)
    async with through(proxy, max_attempts=3) as store:
        # The network returns only once the store is trying to abort, so the
        # upload itself fails for good and the abort must still get through.
        log_trigger("AbortMultipartUpload", proxy.go_up)
        key = store.artifact_key(JOB, "12", "video.mp4")
        with pytest.raises(StorageUnavailable, match="UploadPart") as failure:
            await store.put_stream(
                key, cut_after(data, 6 * MiB, proxy.go_down), content_type="video/mp4"
            )
        assert "gave up after 3 failed attempts" in str(failure.value)
        assert await open_uploads(raw_s3, store.settings.bucket) == []
        with pytest.raises(ObjectNotFound):
            await store.head(key)


async def test_abort_that_cannot_reach_the_store_is_reported(proxy: FaultProxy) -> None:
    async with through(proxy, max_attempts=2) as store:
        key = store.artifact_key(JOB, "12", "video.mp4")
        with pytest.raises(StorageUnavailable) as failure:
            await store.put_stream(
                key, cut_after(blob(12 * MiB), 6 * MiB, proxy.go_down), content_type="video/mp4"
            )
        notes = " ".join(getattr(failure.value, "__notes__", []))
        assert "could not abort multipart upload" in notes
        assert "lifecycle rule" in notes


async def test_unreachable_store_fails_a_small_put(proxy: FaultProxy) -> None:
    async with through(proxy, max_attempts=2) as store:
        proxy.go_down()
        with pytest.raises(StorageUnavailable, match="PutObject"):
            await store.put_bytes(store.artifact_key(JOB, "9", "a.png"), b"x", content_type="")


async def test_check_reports_an_outage(proxy: FaultProxy) -> None:
    async with through(proxy) as store:
        await store.check()
        proxy.go_down()
        with pytest.raises(StorageUnavailable, match="not usable"):
            await store.check()
        proxy.go_up()
        await store.check()


async def test_read_resumes_after_the_connection_breaks(
    proxy: FaultProxy, log_trigger: Callable[..., LogTrigger]
) -> None:
    data = blob(12 * MiB + 7, seed=4)
    async with through(proxy) as store:
        key = store.artifact_key(JOB, "12", "video.mp4")
        await store.put_bytes(key, data, content_type="video/mp4")
        resumed = log_trigger("broke off", lambda: None)
        proxy.break_after(2 * MiB)
        chunks = [chunk async for chunk in store.read_chunks(key, 256 * 1024)]
        assert resumed.seen == 1
        assert b"".join(chunks) == data


async def test_permanent_errors_fail_at_once(
    moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with S3ArtifactStore(s3_settings(moto_endpoint, create_bucket=False)) as store:
        with pytest.raises(StorageRejected, match="NoSuchBucket") as failure:
            await store.put_bytes(store.artifact_key(JOB, "9", "a.png"), b"x", content_type="")
        assert failure.value.code == "NoSuchBucket"
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await store.check()
    assert "storage retry" not in caplog.text


async def test_bad_endpoint_fails_at_start() -> None:
    store = S3ArtifactStore(s3_settings("not a url"))
    with pytest.raises(StorageRejected, match="cannot set up the S3 client"):
        await store.start()
    await store.close()


async def test_unstarted_store_is_unavailable(moto_endpoint: str) -> None:
    store = S3ArtifactStore(s3_settings(moto_endpoint))
    with pytest.raises(StorageUnavailable, match="not started"):
        await store.check()
    with pytest.raises(StorageUnavailable, match="not started"):
        await store.put_bytes(store.artifact_key(JOB, "9", "a.png"), b"x", content_type="")


async def test_existing_bucket_is_reused(moto_endpoint: str) -> None:
    settings = s3_settings(moto_endpoint)
    async with S3ArtifactStore(settings) as first:
        key = first.artifact_key(JOB, "9", "a.png")
        await first.put_bytes(key, b"kept", content_type="image/png")
    async with S3ArtifactStore(settings) as second:
        assert await second.get_bytes(key) == b"kept"

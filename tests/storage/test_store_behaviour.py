"""Behaviour both stores share, run against S3 (a moto server process) and a local directory."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyui_grpc.storage import (
    ArtifactStore,
    InvalidKey,
    LocalArtifactStore,
    ManifestArtifact,
    ObjectNotFound,
    S3ArtifactStore,
    build_manifest,
    guess_content_type,
    parse_manifest,
)
from storage_helpers import MiB, open_uploads
from storage_media import blob, chunked, mp4_bytes, png_bytes

JOB = "4c1f6c1e-0d3a-4e0b-9d0f-7f7c9c1c2a10"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_threshold(store: S3ArtifactStore) -> int:
    return store.settings.multipart_threshold_bytes


async def keys_behind_the_store(store: ArtifactStore, raw_s3: Any) -> dict[str, str]:
    """Key -> content type, read without going through the store."""
    if isinstance(store, S3ArtifactStore):
        bucket = store.settings.bucket
        listing = await raw_s3.list_objects_v2(Bucket=bucket)
        found = {}
        for item in listing.get("Contents", []):
            head = await raw_s3.head_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = head["ContentType"]
        return found
    assert isinstance(store, LocalArtifactStore)
    return {
        path.relative_to(store.root).as_posix(): guess_content_type(path.name)
        for path in store.root.rglob("*")
        if path.is_file() and not path.relative_to(store.root).parts[0].startswith(".")
    }


async def test_images_and_video_land_under_job_keys(store: ArtifactStore, raw_s3: Any) -> None:
    outputs = [
        ("9", "ComfyUI_00001_.png", png_bytes((200, 30, 30)), "image/png"),
        ("9", "ComfyUI_00002_.png", png_bytes((30, 30, 200)), "image/png"),
        ("12", "AnimateDiff_00001.mp4", mp4_bytes(), "video/mp4"),
        # Large enough to go up in parts on S3.
        ("12", "AnimateDiff_00002.webm", b"\x1a\x45\xdf\xa3webm" + blob(11 * MiB), "video/webm"),
    ]
    for node_id, filename, data, content_type in outputs:
        key = store.artifact_key(JOB, node_id, filename)
        assert key == f"outputs/{JOB}/{node_id}/{filename}"
        assert guess_content_type(filename, data[:64]) == content_type
        stored = await store.put_stream(key, chunked(data), content_type=content_type)
        assert (stored.key, stored.size_bytes, stored.sha256, stored.content_type) == (
            key,
            len(data),
            sha256(data),
            content_type,
        )
        found = await store.head(key)
        if isinstance(store, S3ArtifactStore) and len(data) > multipart_threshold(store):
            # A multipart object's hash is known only after its parts; it lives in the manifest.
            assert found == replace(stored, sha256="")
        else:
            assert found == stored
        if isinstance(store, S3ArtifactStore):
            assert stored.uri == f"s3://{store.settings.bucket}/{key}"
        else:
            assert isinstance(store, LocalArtifactStore)
            assert stored.uri == (store.root / key).as_uri()
            assert (store.root / key).read_bytes() == data

    expected = {store.artifact_key(JOB, n, f): ct for n, f, _, ct in outputs}
    assert await keys_behind_the_store(store, raw_s3) == expected


async def test_s3_records_sha256_as_metadata_on_single_puts(
    moto_endpoint: str, raw_s3: Any
) -> None:
    from storage_helpers import s3_settings

    async with S3ArtifactStore(s3_settings(moto_endpoint)) as store:
        for name, data, metadata in [
            ("small.png", png_bytes((1, 2, 3)), {"sha256": sha256(png_bytes((1, 2, 3)))}),
            ("large.mp4", blob(6 * MiB), {}),  # multipart: the hash is in the manifest
        ]:
            key = store.artifact_key(JOB, "7", name)
            stored = await store.put_bytes(key, data, content_type=guess_content_type(name))
            assert stored.sha256 == sha256(data)
            head = await raw_s3.head_object(Bucket=store.settings.bucket, Key=key)
            assert head["Metadata"] == metadata
            assert head["ContentType"] == guess_content_type(name)


@pytest.mark.parametrize(
    ("size", "etag_parts"),
    [
        (12 * MiB, None),  # exactly the threshold: one PUT
        (12 * MiB + 1, 2),  # one byte more: a threshold-sized first part, then the byte
        (23 * MiB + 5, 4),  # 12 MiB, 5 MiB, 5 MiB, 1 MiB + 5 bytes
    ],
)
async def test_threshold_decides_between_one_put_and_parts(
    moto_endpoint: str, raw_s3: Any, size: int, etag_parts: int | None
) -> None:
    from storage_helpers import s3_settings

    settings = s3_settings(moto_endpoint, multipart_threshold_bytes=12 * MiB)
    async with S3ArtifactStore(settings) as store:
        data = blob(size, seed=size)
        key = store.artifact_key(JOB, "12", "clip.mp4")
        stored = await store.put_stream(key, chunked(data, 3 * MiB + 7), content_type="video/mp4")
        assert (stored.size_bytes, stored.sha256) == (size, sha256(data))
        head = await raw_s3.head_object(Bucket=settings.bucket, Key=key)
        etag = head["ETag"].strip('"')
        if etag_parts is None:
            assert "-" not in etag
        else:
            assert etag.endswith(f"-{etag_parts}")
        assert await store.get_bytes(key) == data
        assert await open_uploads(raw_s3, settings.bucket) == []


@pytest.mark.parametrize("chunk_size", [MiB, 3 * MiB + 1])
async def test_reads_back_byte_exact_in_chunks(store: ArtifactStore, chunk_size: int) -> None:
    data = blob(11 * MiB + 3, seed=chunk_size)
    key = store.artifact_key(JOB, "12", "clip.mp4")
    await store.put_stream(key, chunked(data, MiB), content_type="video/mp4")
    chunks = [chunk async for chunk in store.read_chunks(key, chunk_size)]
    assert b"".join(chunks) == data
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size


async def test_small_and_empty_objects_round_trip(store: ArtifactStore) -> None:
    data = blob(1000, seed=3)
    key = store.artifact_key(JOB, "3", "tiny.bin")
    await store.put_bytes(key, data, content_type="application/octet-stream")
    assert await store.get_bytes(key) == data
    assert [c async for c in store.read_chunks(key, 7)] == [
        data[i : i + 7] for i in range(0, 1000, 7)
    ]

    empty = store.artifact_key(JOB, "3", "empty.txt")
    stored = await store.put_bytes(empty, b"", content_type="text/plain")
    assert (stored.size_bytes, stored.sha256) == (0, sha256(b""))
    assert await store.get_bytes(empty) == b""
    assert [c async for c in store.read_chunks(empty, 1024)] == []


async def test_overwriting_replaces_the_object(store: ArtifactStore) -> None:
    key = store.artifact_key(JOB, "3", "again.png")
    await store.put_bytes(key, b"first", content_type="image/png")
    second = await store.put_bytes(key, b"second version", content_type="image/png")
    assert await store.get_bytes(key) == b"second version"
    assert await store.head(key) == second


async def test_manifest_round_trips_through_the_store(store: ArtifactStore) -> None:
    image = png_bytes((0, 128, 0))
    key = store.artifact_key(JOB, "9", "ComfyUI_00001_.png")
    stored = await store.put_bytes(key, image, content_type="image/png")
    created = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    document = build_manifest(
        job_id=JOB,
        state="SUCCEEDED",
        labels={"team": "art"},
        workflow_sha256="ab" * 32,
        create_time=created,
        start_time=created,
        end_time=created,
        error=None,
        artifacts=[
            ManifestArtifact.from_stored(stored, node_id="9", filename="ComfyUI_00001_.png")
        ],
    )
    manifest_key = store.manifest_key(JOB)
    assert manifest_key == f"outputs/{JOB}/manifest.json"
    await store.put_bytes(manifest_key, document, content_type="application/json")

    manifest = parse_manifest(await store.get_bytes(manifest_key))
    assert manifest.job_id == JOB
    assert manifest.labels == {"team": "art"}
    (artifact,) = manifest.artifacts
    assert (artifact.key, artifact.sha256, artifact.size_bytes) == (key, sha256(image), len(image))


async def test_missing_objects_raise_object_not_found(store: ArtifactStore) -> None:
    key = store.artifact_key(JOB, "1", "nothing.png")
    with pytest.raises(ObjectNotFound):
        await store.get_bytes(key)
    with pytest.raises(ObjectNotFound):
        await store.head(key)
    with pytest.raises(ObjectNotFound):
        await anext(store.read_chunks(key, 1024))
    await store.delete(key)  # deleting what is not there is fine


async def test_delete_removes_the_object(store: ArtifactStore) -> None:
    key = store.artifact_key(JOB, "1", "gone.png")
    await store.put_bytes(key, b"x", content_type="image/png")
    await store.delete(key)
    with pytest.raises(ObjectNotFound):
        await store.get_bytes(key)


BAD_KEYS = [
    "../escape.png",
    "outputs/../escape.png",
    f"outputs/{JOB}/../../escape.png",
    "/outputs/abs.png",
    "elsewhere/job/1/a.png",
    "outputs",
    "outputs/",
    "outputs//a.png",
    "outputs/job/1/a\x00b.png",
    "outputs/job/1/a\nb.png",
    "outputs/.hidden/x.png",
    "outputs/job/1/back\\slash.png",
    "",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_keys_outside_the_prefix_are_refused(store: ArtifactStore, key: str) -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the source must not be read")
        yield b""  # pragma: no cover

    with pytest.raises(InvalidKey):
        await store.put_stream(key, never(), content_type="image/png")
    with pytest.raises(InvalidKey):
        await store.get_bytes(key)
    with pytest.raises(InvalidKey):
        await store.head(key)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    with pytest.raises(InvalidKey):
        await store.presign_get(key, 60)
    with pytest.raises(InvalidKey):
        await anext(store.read_chunks(key, 1024))


class SourceBroke(Exception):
    pass


async def test_failed_source_leaves_nothing_behind(
    store: ArtifactStore, raw_s3: Any, tmp_path: Path
) -> None:
    async def breaks_after_7_mib() -> AsyncIterator[bytes]:
        for _ in range(7):
            yield blob(MiB)
        raise SourceBroke("ComfyUI went away")

    key = store.artifact_key(JOB, "12", "broken.mp4")
    with pytest.raises(SourceBroke):
        await store.put_stream(key, breaks_after_7_mib(), content_type="video/mp4")
    with pytest.raises(ObjectNotFound):
        await store.head(key)
    if isinstance(store, S3ArtifactStore):
        assert await open_uploads(raw_s3, store.settings.bucket) == []
    else:
        assert isinstance(store, LocalArtifactStore)
        assert [p for p in store.root.rglob("*") if p.is_file()] == []


async def test_presigned_url_downloads_the_object(store: ArtifactStore) -> None:
    data = png_bytes((9, 9, 9))
    key = store.artifact_key(JOB, "9", "share.png")
    await store.put_bytes(key, data, content_type="image/png")
    with pytest.raises(ValueError, match="TTL"):
        await store.presign_get(key, 0)
    with pytest.raises(ValueError, match="TTL"):
        await store.presign_get(key, 8 * 24 * 3600)
    url = await store.presign_get(key, 300)
    if isinstance(store, LocalArtifactStore):
        assert url is None
        return
    assert url is not None
    assert "X-Amz-Expires=300" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"


async def test_concurrent_multipart_uploads(store: ArtifactStore) -> None:
    payloads = {f"clip{i}.mp4": blob(5 * MiB + 1000 * i, seed=i) for i in range(6)}
    results = await asyncio.gather(
        *(
            store.put_stream(
                store.artifact_key(JOB, "12", name), chunked(data), content_type="video/mp4"
            )
            for name, data in payloads.items()
        )
    )
    for (name, data), stored in zip(payloads.items(), results, strict=True):
        assert stored.sha256 == sha256(data)
        assert await store.get_bytes(store.artifact_key(JOB, "12", name)) == data


async def test_check_passes_on_a_healthy_store(store: ArtifactStore) -> None:
    await store.check()

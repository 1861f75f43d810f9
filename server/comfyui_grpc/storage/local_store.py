"""An artifact store in a local directory: the default for ``dev`` and hosts without S3.

Objects are files at ``{root}/{key}``, so the layout matches the S3 one. Each
object's content type and sha256 live in a small JSON file under a hidden
directory that no sanitised key can name. Writes go to a temporary file that
is renamed into place, so readers never see half an object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import IO

from .base import ArtifactStore, check_chunk_size, check_ttl
from .content_types import guess_content_type
from .errors import ObjectNotFound, StorageError, StorageUnavailable
from .objects import StoredObject

log = logging.getLogger(__name__)
META_DIR = ".comfyui-grpc-meta"


class LocalArtifactStore(ArtifactStore):
    """Stores artifacts as files under ``root``."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        super().__init__(prefix)
        self._root = Path(os.path.abspath(root))

    @property
    def root(self) -> Path:
        return self._root

    @property
    def location(self) -> str:
        return self._root.joinpath(*self.prefix.split("/")).as_uri()

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create artifact directory {self._root}: {exc}") from exc

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        ok = await asyncio.to_thread(
            lambda: self._root.is_dir() and os.access(self._root, os.W_OK | os.X_OK)
        )
        if not ok:
            raise StorageUnavailable(f"artifact directory {self._root} is missing or not writable")

    def _path(self, key: str) -> Path:
        self.validate_key(key)
        return self._root.joinpath(*key.split("/"))

    def _meta_path(self, key: str) -> Path:
        return self._root.joinpath(META_DIR, *key.split("/")).with_name(
            key.rsplit("/", 1)[-1] + ".json"
        )

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        path = self._path(key)
        hasher = hashlib.sha256()
        size = 0
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            # Opened and closed on the loop: a thread could be abandoned by a
            # cancellation and leak the handle.
            handle = _open_for_write(tmp)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}") from exc
        try:
            try:
                async for chunk in chunks:
                    hasher.update(chunk)
                    size += len(chunk)
                    await _write(handle, chunk, path)
                await _finish(handle, path)
            finally:
                handle.close()
            stored = StoredObject(
                key=key,
                uri=path.as_uri(),
                size_bytes=size,
                sha256=hasher.hexdigest(),
                content_type=content_type,
            )
            await asyncio.to_thread(self._commit, tmp, path, stored)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        return stored

    def _commit(self, tmp: Path, path: Path, stored: StoredObject) -> None:
        meta = {"content_type": stored.content_type, "sha256": stored.sha256}
        meta_path = self._meta_path(stored.key)
        meta_tmp = meta_path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
            os.replace(meta_tmp, meta_path)
        except OSError as exc:
            meta_tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path}: {exc}") from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:
            meta_path.unlink(missing_ok=True)  # it described the object that failed
            raise StorageError(f"cannot write {path}: {exc}") from exc

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    async def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        check_chunk_size(chunk_size)
        path = self._path(key)
        try:
            # Opened and closed on the loop, so a cancelled read never leaks it.
            handle = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, chunk_size)
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    async def head(self, key: str) -> StoredObject:
        path = self._path(key)
        return await asyncio.to_thread(self._head, key, path)

    def _head(self, key: str, path: Path) -> StoredObject:
        try:
            if not path.is_file():
                raise ObjectNotFound(f"no object {key!r}")
            size = path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        meta: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self._meta_path(key).read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                meta = loaded
        content_type = meta.get("content_type")
        sha256 = meta.get("sha256")
        return StoredObject(
            key=key,
            uri=path.as_uri(),
            size_bytes=size,
            sha256=sha256 if isinstance(sha256, str) else "",
            content_type=content_type
            if isinstance(content_type, str) and content_type
            else guess_content_type(path.name),
        )

    async def presign_get(self, key: str, ttl_seconds: int) -> str | None:
        check_ttl(ttl_seconds)
        self.validate_key(key)
        return None

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            path.unlink(missing_ok=True)
            self._meta_path(key).unlink(missing_ok=True)

        try:
            await asyncio.to_thread(remove)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc


def _open_for_write(tmp: Path) -> IO[bytes]:
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp.open("xb")


async def _write(handle: IO[bytes], chunk: bytes, path: Path) -> None:
    try:
        await asyncio.to_thread(handle.write, chunk)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


async def _finish(handle: IO[bytes], path: Path) -> None:
    """Flushes to disk before the rename, so a crash cannot leave a torn object."""

    def sync() -> None:
        handle.flush()
        os.fsync(handle.fileno())

    try:
        await asyncio.to_thread(sync)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc

"""The interface every artifact store implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Self

from . import keys
from .objects import StoredObject

MAX_PRESIGN_TTL_SECONDS = 7 * 24 * 3600
"""SigV4 presigned URLs cannot live longer than a week."""


class ArtifactStore(abc.ABC):
    """Where job outputs and manifests live.

    Keys are built and checked here, once for every implementation, so that a
    key handed back by a caller can never reach outside the store's prefix.
    ``put_stream`` never holds a whole object in memory.
    """

    def __init__(self, prefix: str = "") -> None:
        self._prefix = keys.normalize_prefix(prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store writes, for logs (no credentials)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Opens the store's clients (once) and creates the bucket if configured."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the clients; safe to call more than once."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Cheap reachability probe for health checks; raises ``StorageUnavailable``."""

    def artifact_key(self, job_id: str, node_id: str, filename: str) -> str:
        """The sanitised ``{prefix}/{job_id}/{node_id}/{filename}``."""
        return keys.artifact_key(self._prefix, job_id, node_id, filename)

    def manifest_key(self, job_id: str) -> str:
        """The sanitised ``{prefix}/{job_id}/manifest.json``."""
        return keys.manifest_key(self._prefix, job_id)

    def validate_key(self, key: str) -> None:
        """Raises ``InvalidKey`` unless this store could have produced ``key``."""
        keys.validate_key(self._prefix, key)

    @abc.abstractmethod
    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        """Stores the bytes of ``chunks`` under ``key``, hashing and counting them on the way.

        The object appears whole or not at all. An exception raised by
        ``chunks`` itself propagates unchanged (after cleaning up), so callers
        can tell a failed source from a failed store.
        """

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Stores a small in-memory object (a manifest)."""

        async def one_chunk() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one_chunk(), content_type=content_type)

    @abc.abstractmethod
    async def get_bytes(self, key: str) -> bytes:
        """Reads a small object whole; raises ``ObjectNotFound``."""

    @abc.abstractmethod
    def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Streams an object in chunks of ``chunk_size`` bytes (the last may be shorter).

        ``ObjectNotFound`` is raised by the first ``__anext__``; call
        :meth:`head` first to fail before sending anything.
        """

    @abc.abstractmethod
    async def head(self, key: str) -> StoredObject:
        """Describes a stored object; raises ``ObjectNotFound``."""

    @abc.abstractmethod
    async def presign_get(self, key: str, ttl_seconds: int) -> str | None:
        """A time-limited GET URL, or None when the store cannot make one."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Removes an object; deleting a missing object is not an error."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")


def check_ttl(ttl_seconds: int) -> None:
    if not 1 <= ttl_seconds <= MAX_PRESIGN_TTL_SECONDS:
        raise ValueError(f"presign TTL must be between 1 and {MAX_PRESIGN_TTL_SECONDS} seconds")

"""Exceptions raised by artifact stores.

The job pipeline ends a job FAILED (reason ``STORAGE_FAILED``) on any
:class:`StorageError`; the subclasses let callers tell an outage from a
misconfiguration or a missing object.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class: the store could not do what was asked."""


class StorageUnavailable(StorageError):
    """The store is unreachable, or transient errors outlasted the retries."""


class StorageRejected(StorageError):
    """The store refused the request for good (access denied, no such bucket, ...).

    Retrying cannot help, so these fail at once; ``code`` is the S3 error code.
    """

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFound(StorageError):
    """No object is stored under the key."""


class InvalidKey(StorageError, ValueError):
    """The key is not one this store could have produced (traversal, bad characters, ...)."""

"""ComfyUI backends: one REST client and one socket each, and the pool that
chooses where a job runs."""

from .backend import Backend
from .pool import BackendPool

__all__ = ["Backend", "BackendPool"]

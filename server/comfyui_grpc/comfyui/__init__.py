"""ComfyUI's HTTP API and WebSocket, as the gateway uses them."""

from .client import ComfyUIClient, QueueView, SubmitResult
from .errors import ComfyUIError, ComfyUIUnavailable, ComfyUIValidationError

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIUnavailable",
    "ComfyUIValidationError",
    "QueueView",
    "SubmitResult",
]

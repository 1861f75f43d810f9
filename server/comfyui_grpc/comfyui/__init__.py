"""ComfyUI's HTTP API and WebSocket, as the gateway uses them."""

from .client import ComfyUIClient, QueueView, SubmitResult
from .errors import (
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    ComfyUIValidationError,
)

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIProtocolError",
    "ComfyUIUnavailable",
    "ComfyUIValidationError",
    "QueueView",
    "SubmitResult",
]

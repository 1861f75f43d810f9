"""Errors from talking to ComfyUI.

ComfyUIError
├── ComfyUIUnavailable      connection refused/reset, timeout, 5xx
└── ComfyUIValidationError  POST /prompt rejected the graph (400, or 200
                            with node_errors)
"""

from __future__ import annotations

from typing import Any


class ComfyUIError(Exception):
    pass


class ComfyUIUnavailable(ComfyUIError):
    """The backend did not answer usefully; retrying elsewhere or later may work.

    ``maybe_sent`` is False only when the request certainly never reached
    ComfyUI (the connection was refused); otherwise it may have acted on it.
    """

    def __init__(self, message: str, *, maybe_sent: bool = True, status: int = 0) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.status = status
        """The HTTP status ComfyUI answered, 0 when it did not answer."""


class ComfyUIValidationError(ComfyUIError):
    """ComfyUI refused the workflow. ``error`` and ``node_errors`` are its own JSON."""

    def __init__(self, message: str, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors

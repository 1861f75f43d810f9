"""Errors from talking to ComfyUI.

ComfyUIError
├── ComfyUIUnavailable      connection refused/reset, timeout, 5xx
│   └── ComfyUIProtocolError   an answer of the wrong shape or too large
└── ComfyUIValidationError  POST /prompt rejected the graph (400, or 200
                            with node_errors)

A protocol error is a kind of unavailability on purpose: every handler that
copes with a backend that does not answer usefully (retry, reconcile later,
move the job) copes with one that answers garbage the same way.
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


class ComfyUIProtocolError(ComfyUIUnavailable):
    """ComfyUI answered, but not with what its API promises.

    ``kind`` names what was wrong, for the protocol-error metric and logs:
    ``too_large``, ``invalid_json`` or ``bad_<what>`` (``bad_queue``,
    ``bad_history``, ...).
    """

    def __init__(self, message: str, *, kind: str, status: int = 200) -> None:
        super().__init__(message, status=status)
        self.kind = kind


class ComfyUIValidationError(ComfyUIError):
    """ComfyUI refused the workflow. ``error`` and ``node_errors`` are its own JSON."""

    def __init__(self, message: str, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors

"""What the scheduler core decides; the executor carries these out.

Each names the job it is about and, where ComfyUI is touched, the backend
whose prompt it is: the core only names prompts the job owns there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Submit:
    """Record the job with its backend, then POST it to that ComfyUI."""

    job_id: str
    backend: str
    attempt: int = 0
    """Which hand-over this is: its outcome is reported with it."""


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Delete the job's waiting prompt from the backend's queue and confirm it is gone."""

    job_id: str
    backend: str
    attempt: int = 0
    """Which withdrawal this is: its outcome is reported with it."""


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Interrupt the job's running prompt (by prompt id) until ComfyUI confirms."""

    job_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class DeleteOwed:
    """Delete (and interrupt) prompts a returning backend may still hold for jobs moved off it."""

    backend: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job is cancelled; nothing more to do on ComfyUI."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Lost:
    """The job was running on a backend that was lost or forgot it: it fails BACKEND_LOST."""

    job_id: str
    backend: str
    forgotten: bool = False
    """ComfyUI answers but no longer knows the prompt (restarted, queue cleared)."""


@dataclass(frozen=True, slots=True)
class Requeued:
    """The job is back in the gateway's line (from ``backend``)."""

    job_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class Positions:
    """Places in the line that changed: (job id, 1-based position)."""

    changes: tuple[tuple[str, int], ...]


Action = Submit | Withdraw | Interrupt | DeleteOwed | Cancelled | Lost | Requeued | Positions

"""Progress display for the CLI: a live bar on a terminal, plain lines elsewhere.

A redrawn bar is unreadable in a CI log or a pipe, so when the stream is
not a terminal the display prints one line per state change, per node and
per 10% of progress instead.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from .models import JobState
from .progress import EventKind, ProgressUpdate

BAR_WIDTH = 24
PLAIN_STEP = 10


def _state(state: JobState) -> str:
    return state.name.lower() if state is not JobState.UNSPECIFIED else "-"


def describe(update: ProgressUpdate) -> str:
    """What is happening, in a few words (node, step, queue position)."""
    if update.kind is EventKind.QUEUED or (
        update.state is JobState.QUEUED and update.queue_position
    ):
        return f"queue position {update.queue_position}" if update.queue_position else "queued"
    if update.kind is EventKind.ARTIFACT_STORED and update.artifact is not None:
        return f"stored {update.artifact.key}"
    if update.kind is EventKind.FAILED and update.error is not None:
        return f"{update.error.reason}: {update.error.message}"
    if update.kind is EventKind.UPLOADING:
        return "storing outputs"
    if update.node_id:
        text = f"node {update.node_id}"
        if update.class_type:
            text += f" {update.class_type}"
        if update.max:
            text += f" {update.value}/{update.max}"
        return text
    return ""


class ProgressDisplay:
    """Renders updates to ``stream`` (stderr, so stdout stays clean for scripts)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        label: str = "",
        show_snapshot: bool = True,
    ) -> None:
        self.stream = stream
        self.show_snapshot = show_snapshot
        self.tty = stream.isatty() if tty is None else tty
        self.label = label
        self._drawn = False
        self._last_plain: tuple[str, str, int] | None = None
        self._started = time.monotonic()
        self._last: ProgressUpdate | None = None
        self.preview_note = ""
        """Shown after the bar: where the newest preview was written."""

    def update(self, update: ProgressUpdate) -> None:
        """Show one update. A caller that replays a job from its start passes
        ``show_snapshot=False``: the snapshot would show the end before the
        beginning."""
        if update.kind is EventKind.SNAPSHOT and not self.show_snapshot:
            return
        self._last = update
        if self.tty:
            self._draw(update)
        else:
            self._line(update)

    def _draw(self, update: ProgressUpdate) -> None:
        filled = round(update.fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = time.monotonic() - self._started
        text = f"{self.label}[{bar}] {update.percent:3d}%  {_state(update.state):<9} "
        text += f"{describe(update)}  {elapsed:4.0f}s"
        if self.preview_note:
            text += f"  {self.preview_note}"
        columns = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r\x1b[2K" + text[: max(10, columns - 1)])
        self.stream.flush()
        self._drawn = True

    def _line(self, update: ProgressUpdate) -> None:
        bucket = update.percent // PLAIN_STEP
        key = (update.state.name, update.node_id, bucket)
        important = update.kind in (
            EventKind.SNAPSHOT,
            EventKind.QUEUED,
            EventKind.STARTED,
            EventKind.NODE_STARTED,
            EventKind.UPLOADING,
            EventKind.ARTIFACT_STORED,
            EventKind.SUCCEEDED,
            EventKind.FAILED,
            EventKind.CANCELLED,
        )
        if not important and key == self._last_plain:
            return
        if update.kind is EventKind.NODE_FINISHED or update.kind is EventKind.NODES_CACHED:
            return
        self._last_plain = key
        detail = describe(update)
        line = f"{self.label}{update.percent:3d}% {_state(update.state)}"
        self.stream.write(f"{line} {detail}".rstrip() + "\n")
        self.stream.flush()

    def previewed(self, note: str) -> None:
        """Note a new preview: redrawn into the bar, or one plain line the first time."""
        first = not self.preview_note
        self.preview_note = note
        if self.tty and self._last is not None:
            self._draw(self._last)
        elif not self.tty and first:
            self.stream.write(f"{self.label}{note}\n")
            self.stream.flush()

    def clear(self) -> None:
        """End the live line so the next output starts on a fresh one."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def message(self, text: str) -> None:
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

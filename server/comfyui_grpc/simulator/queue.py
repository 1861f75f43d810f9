"""The prompt queue and history, with ComfyUI's ordering and bookkeeping quirks.

Pending prompts live in a binary heap ordered like ComfyUI's tuples
``(number, prompt_id, prompt, ...)``: ``GET /queue`` shows the heap's list order,
not sorted order, and two pending items with equal number and prompt_id but
different prompts cannot be compared (ComfyUI then answers POST /prompt with
500 after queueing; so does this). History keeps insertion order, so a repeated
prompt_id keeps its old slot but shows the newest run.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(eq=False)
class QueueItem:
    """One accepted prompt, shown by /queue as ``[number, id, prompt, extra_data, outputs]``."""

    number: int | float
    prompt_id: str
    prompt: JsonDict
    extra_data: JsonDict
    outputs: list[str]
    sensitive: JsonDict = field(default_factory=dict)

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def __lt__(self, other: QueueItem) -> bool:
        # Python's tuple order: first differing element decides; dicts cannot be ordered.
        mine: tuple[Any, ...] = (
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs,
        )
        theirs: tuple[Any, ...] = (
            other.number,
            other.prompt_id,
            other.prompt,
            other.extra_data,
            other.outputs,
        )
        for a, b in zip(mine, theirs, strict=True):
            if a == b:
                continue
            if isinstance(a, dict) or isinstance(b, dict):
                raise TypeError("'<' not supported between instances of 'dict' and 'dict'")
            return bool(a < b)
        return False


@dataclass
class HistoryStatus:
    status_str: str
    completed: bool
    messages: list[list[Any]]

    def as_dict(self) -> JsonDict:
        return {
            "status_str": self.status_str,
            "completed": self.completed,
            "messages": self.messages,
        }


class PromptQueue:
    """Pending heap, running items, history and the ``number`` counter."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.pending: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, JsonDict] = {}
        self.number = 0
        self._task_ids = itertools.count()
        self._wakeup = asyncio.Event()

    # -- submission -------------------------------------------------------
    def next_number(self, front: bool) -> int:
        """Consume the server counter (rejected prompts consume it too)."""
        number = self.number
        self.number += 1
        return -number if front else number

    def put(self, item: QueueItem) -> None:
        try:
            heapq.heappush(self.pending, item)
        finally:
            self._wakeup.set()
            self.on_change()

    async def get(self) -> tuple[int, QueueItem]:
        """Wait for the lowest-numbered pending item and mark it running."""
        while not self.pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = heapq.heappop(self.pending)
        task_id = next(self._task_ids)
        self.running[task_id] = item
        self.on_change()
        return task_id, item

    def requeue_running(self) -> None:
        """Put interrupted running items back (a restart that keeps state)."""
        for item in self.running.values():
            heapq.heappush(self.pending, item)
        self.running.clear()
        if self.pending:
            self._wakeup.set()

    def task_done(self, task_id: int, result: JsonDict, status: HistoryStatus) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        entry: JsonDict = {"prompt": item.as_list(), "outputs": {}, "status": status.as_dict()}
        entry.update(result)
        self.history[item.prompt_id] = entry
        self.on_change()

    # -- inspection -------------------------------------------------------
    def remaining(self) -> int:
        return len(self.pending) + len(self.running)

    def running_ids(self) -> list[str]:
        return [item.prompt_id for item in self.running.values()]

    def snapshot(self) -> JsonDict:
        return {
            "queue_running": [copy.deepcopy(i.as_list()) for i in self.running.values()],
            "queue_pending": [copy.deepcopy(i.as_list()) for i in self.pending],
        }

    # -- changes ----------------------------------------------------------
    def delete_pending(self, prompt_id: str) -> bool:
        """Remove the first pending item with this id; running items are never touched."""
        for index, item in enumerate(self.pending):
            if item.prompt_id == prompt_id:
                if len(self.pending) == 1:
                    self.wipe()
                else:
                    self.pending.pop(index)
                    heapq.heapify(self.pending)
                    self.on_change()
                return True
        return False

    def wipe(self) -> None:
        self.pending = []
        self.on_change()

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> JsonDict:
        if prompt_id is not None:
            if prompt_id in self.history:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])}
            return {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: JsonDict = {}
        for index, (key, entry) in enumerate(self.history.items()):
            if index >= offset:
                out[key] = copy.deepcopy(entry)
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def delete_history(self, prompt_id: str) -> None:
        self.history.pop(prompt_id, None)

    def wipe_history(self) -> None:
        self.history.clear()

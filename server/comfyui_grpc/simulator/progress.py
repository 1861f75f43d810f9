"""Per-prompt progress bookkeeping behind ``progress_state`` messages.

Entries appear in the order nodes first report (start, update or finish), never
for pending nodes. A started node shows ``0.0/1.0`` floats, updates carry the
node's own numbers, and finishing copies ``max`` into ``value``; a cached output
node that only finishes therefore shows integer ``1/1``, as ComfyUI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class NodeProgress:
    value: int | float
    max: int | float
    state: str


class ProgressTracker:
    """The ``nodes`` map of one prompt's ``progress_state`` messages."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self._nodes: dict[str, NodeProgress] = {}

    def start(self, node_id: str) -> None:
        self._nodes[node_id] = NodeProgress(0.0, 1.0, "running")

    def update(self, node_id: str, value: int | float, maximum: int | float) -> None:
        self._nodes[node_id] = NodeProgress(value, maximum, "running")

    def finish(self, node_id: str) -> None:
        entry = self._nodes.get(node_id) or NodeProgress(0, 1, "pending")
        entry.state = "finished"
        entry.value = entry.max
        self._nodes[node_id] = entry

    def message(self) -> dict[str, Any]:
        nodes = {
            node_id: {
                "value": entry.value,
                "max": entry.max,
                "state": entry.state,
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self._nodes.items()
        }
        return {"prompt_id": self.prompt_id, "nodes": nodes}

"""Overall job progress from ComfyUI's per-node reports.

ComfyUI reports ``value/max`` per node, restarting at every node, and only
some nodes report at all. Here each node that will run gets a weight (the
sampler dominates a generation's time), cached nodes count as done, and the
job fraction is the weighted share completed. Execution fills the first 95 %,
storing outputs the rest; the reported fraction never goes backwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import ProgressView

EXECUTION_SHARE = 0.95

# Classes known to produce outputs; only their upstream closure runs.
OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveWEBM",
        "VHS_VideoCombine",
        "PreviewAny",
        "SaveImageWebsocket",
        "SaveLatent",
        "SaveAudio",
    }
)

# Rough relative cost of a node; anything unlisted weighs 1.
NODE_WEIGHTS: Mapping[str, float] = {
    "KSampler": 20.0,
    "KSamplerAdvanced": 20.0,
    "SamplerCustom": 20.0,
    "SamplerCustomAdvanced": 20.0,
    "VAEDecode": 3.0,
    "VAEDecodeTiled": 3.0,
    "VHS_VideoCombine": 2.0,
    "CheckpointLoaderSimple": 2.0,
    "ADE_LoadAnimateDiffModel": 2.0,
}


def nodes_to_run(workflow: Mapping[str, Any]) -> dict[str, str]:
    """Map each node ComfyUI will execute to its class.

    That is the upstream closure of the output nodes; a graph with no known
    output class (custom nodes) is taken whole.
    """
    classes = {
        str(node_id): str(node.get("class_type", ""))
        for node_id, node in workflow.items()
        if isinstance(node, Mapping)
    }
    outputs = [n for n, c in classes.items() if c in OUTPUT_CLASSES]
    if not outputs:
        return classes
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in classes:
            continue
        seen.add(node_id)
        inputs = workflow[node_id].get("inputs", {})
        if isinstance(inputs, Mapping):
            for value in inputs.values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    stack.append(value[0])
    return {n: classes[n] for n in classes if n in seen}


class ProgressTracker:
    def __init__(self, workflow: Mapping[str, Any]) -> None:
        self.classes = {
            str(node_id): str(node.get("class_type", ""))
            for node_id, node in workflow.items()
            if isinstance(node, Mapping)
        }
        self._weights = {n: NODE_WEIGHTS.get(c, 1.0) for n, c in nodes_to_run(workflow).items()}
        self._total = sum(self._weights.values()) or 1.0
        self._done: set[str] = set()
        self._current = ""
        self._value = 0
        self._max = 0
        self._upload_done = 0
        self._upload_total = 0
        self._fraction = 0.0

    @property
    def current_node(self) -> str:
        return self._current

    def class_of(self, node_id: str) -> str:
        return self.classes.get(node_id, "")

    def cached(self, node_ids: list[str]) -> None:
        self._done.update(n for n in node_ids if n in self._weights)
        self._advance()

    def started(self, node_id: str) -> str | None:
        """Record a node start; return the node that thereby finished, if any."""
        previous = self._current
        finished = None
        if previous and previous != node_id and previous not in self._done:
            self._done.add(previous)
            finished = previous
        self._current = node_id
        self._value = 0
        self._max = 0
        if node_id not in self._weights:
            # A node outside the predicted set runs after all: count it.
            self._weights[node_id] = NODE_WEIGHTS.get(self.class_of(node_id), 1.0)
            self._total += self._weights[node_id]
        self._advance()
        return finished

    def stepped(self, node_id: str, value: int, maximum: int) -> float:
        """Record a step of ``node_id``; return the node's own fraction."""
        if node_id != self._current:
            self.started(node_id)
        self._value = max(0, value)
        self._max = max(0, maximum)
        self._advance()
        return self.node_fraction

    def finished(self, node_id: str) -> bool:
        """Record a node end; False when it was already counted."""
        if node_id in self._done:
            return False
        self._done.add(node_id)
        if node_id == self._current:
            self._current = ""
            self._value = self._max = 0
        self._advance()
        return True

    def execution_done(self) -> None:
        self._done.update(self._weights)
        self._current = ""
        self._value = self._max = 0
        self._advance()

    def upload(self, done: int, total: int) -> None:
        self._upload_done, self._upload_total = done, total
        self._advance()

    def complete(self) -> None:
        self._fraction = 1.0

    @property
    def node_fraction(self) -> float:
        if self._max <= 0:
            return 0.0
        return min(1.0, self._value / self._max)

    @property
    def fraction(self) -> float:
        return self._fraction

    def _advance(self) -> None:
        done = sum(self._weights.get(n, 0.0) for n in self._done)
        if self._current and self._current not in self._done:
            done += self._weights.get(self._current, 1.0) * self.node_fraction
        value = EXECUTION_SHARE * min(1.0, done / self._total)
        if self._upload_total:
            value = EXECUTION_SHARE + (1 - EXECUTION_SHARE) * self._upload_done / self._upload_total
        self._fraction = max(self._fraction, min(value, 1.0))

    def view(self) -> ProgressView:
        return ProgressView(
            fraction=self._fraction,
            node_id=self._current,
            class_type=self.class_of(self._current),
            value=self._value,
            max=self._max,
            nodes_completed=len(self._done & self._weights.keys()),
            nodes_total=len(self._weights),
        )

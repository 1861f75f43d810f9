"""Execution order and cache keys, reproducing how ComfyUI walks a prompt.

Order: output nodes are added one by one; each addition walks its uncached
inputs depth-first (a stack, inputs pushed in the prompt's key order) and
records nodes in visit order. Among the nodes whose inputs are all done, an
output node runs first, then a node feeding an output, then one two links away
from an output, else the first in visit order. This is why ComfyUI runs the
txt2img graph as 1, 4, 3, 2, 5, 6, 7 (transcript 15) and not in id order.

Cache keys: a node's key is its class, its IS_CHANGED value, its constant
inputs and, for linked inputs, the position of the source among the node's
ordered ancestors; the keys of all ancestors are part of it. Equal keys mean
"same computation", whatever the node ids (unless the node takes UNIQUE_ID).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Prompt = Mapping[str, Mapping[str, Any]]


def is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


class ExecutionOrder:
    """The set of nodes still to run for one prompt, and which may run next."""

    def __init__(
        self,
        prompt: Prompt,
        is_output: Callable[[str], bool],
        is_cached: Callable[[str], bool],
    ) -> None:
        self._prompt = prompt
        self._is_output = is_output
        self._is_cached = is_cached
        self._pending: dict[str, None] = {}
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, None]] = {}

    def add(self, node_id: str) -> None:
        """Schedule a node and, recursively, its uncached inputs."""
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = None
            self._block_count[current] = 0
            self._blocking[current] = {}
            for value in self._prompt[current]["inputs"].values():
                if is_link(value):
                    source = value[0]
                    if not self._is_cached(source):
                        stack.append(source)
                    links.append((source, current))
        for source, target in links:
            if self._is_cached(source):
                continue
            self.add(source)
            if target not in self._blocking[source]:
                self._blocking[source][target] = None
                self._block_count[target] += 1

    def empty(self) -> bool:
        return not self._pending

    def next(self) -> str:
        """The node ComfyUI would stage next."""
        ready = [n for n in self._pending if self._block_count[n] == 0]
        if not ready:
            raise RuntimeError("dependency cycle in prompt")
        for node in ready:
            if self._is_output(node):
                return node
        for node in ready:
            if any(self._is_output(b) for b in self._blocking[node]):
                return node
        for node in ready:
            for blocked in self._blocking[node]:
                if any(self._is_output(b) for b in self._blocking[blocked]):
                    return node
        return ready[0]

    def done(self, node_id: str) -> None:
        for blocked in self._blocking.pop(node_id, {}):
            self._block_count[blocked] -= 1
        self._pending.pop(node_id, None)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, set):
        return frozenset(_hashable(v) for v in value)
    return value


class _Missing:
    """Signature of a link to a node that does not exist: never equal to anything."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


def cache_keys(
    prompt: Prompt,
    is_changed: Callable[[str], object],
    takes_unique_id: Callable[[str], bool],
) -> dict[str, Any]:
    """The cache key of every node in the prompt."""

    def ancestry(node_id: str) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def walk(current: str) -> None:
            node = prompt.get(current)
            if node is None:
                return
            inputs = node["inputs"]
            for key in sorted(inputs):
                value = inputs[key]
                if is_link(value) and value[0] not in seen:
                    seen.add(value[0])
                    order.append(value[0])
                    walk(value[0])

        walk(node_id)
        return order

    def immediate(node_id: str, positions: Mapping[str, int]) -> Any:
        node = prompt.get(node_id)
        if node is None:
            return _Missing()
        class_type = node["class_type"]
        changed = is_changed(node_id)
        if isinstance(changed, float) and math.isnan(changed):
            return _Missing()
        signature: list[Any] = [class_type, _hashable(changed)]
        if takes_unique_id(node_id):
            signature.append(node_id)
        inputs = node["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                signature.append((key, ("ANCESTOR", positions[value[0]], value[1])))
            else:
                signature.append((key, _hashable(value)))
        return tuple(signature)

    keys: dict[str, Any] = {}
    for node_id in prompt:
        ancestors = ancestry(node_id)
        positions = {a: i for i, a in enumerate(ancestors)}
        parts = [immediate(node_id, positions)]
        parts.extend(immediate(a, positions) for a in ancestors)
        keys[node_id] = tuple(parts)
    return keys

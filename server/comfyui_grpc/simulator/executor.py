"""Runs queued prompts one at a time and emits ComfyUI's WebSocket messages.

Message routing follows ComfyUI: lifecycle messages (``execution_*``,
``executing``, ``executed``) go only to the prompt's ``client_id`` and are not
sent at all without one; ``progress``, ``progress_state`` and previews go to
the client, or to everyone when the prompt has no client id;
``execution_interrupted`` likewise; TEXT frames always go to everyone. The
interrupt flag is global and is cleared when the next prompt starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .files import Folders
from .graph import ExecutionOrder, cache_keys, is_link
from .nodes import NodeCatalog, NodeOutput, Preview
from .progress import ProgressTracker
from .queue import HistoryStatus, PromptQueue, QueueItem
from .ws import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, TEXT, SocketHub

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]


class Interrupted(Exception):
    """Raised inside a node when /interrupt was requested."""


class SimulatedFailure(RuntimeError):
    """Raised for nodes of the class named by ``Faults.fail_node_class``."""


@dataclass
class CacheEntry:
    values: tuple[Any, ...]
    ui: JsonDict | None


@dataclass
class Timing:
    """Where nodes get their durations from (faults override the constructor)."""

    step_seconds: Callable[[], float]
    time_scale: Callable[[], float]
    fail_node_class: Callable[[], str | None]
    latent_previews: Callable[[], bool] = lambda: False
    """Whether samplers render previews (ComfyUI's ``--preview-method`` is not none)."""


class _Run:
    """One prompt's execution: the context handed to nodes, plus bookkeeping."""

    def __init__(self, executor: Executor, item: QueueItem) -> None:
        self.executor = executor
        self.item = item
        self.prompt_id = item.prompt_id
        self.client_id: str | None = item.extra_data.get("client_id")
        self.tracker = ProgressTracker(item.prompt_id)
        self.messages: list[list[Any]] = []
        self.executed: list[str] = []
        self.node_id = ""
        self.folders: Folders = executor.folders

    # -- NodeContext --------------------------------------------------------
    def step_seconds(self) -> float:
        return self.executor.timing.step_seconds()

    def time_scale(self) -> float:
        return self.executor.timing.time_scale()

    def latent_previews(self) -> bool:
        return self.executor.timing.latent_previews()

    async def sleep(self, seconds: float) -> None:
        flag = self.executor.interrupt_flag
        if flag.is_set():
            raise Interrupted
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flag.wait(), timeout=seconds)
        if flag.is_set():
            raise Interrupted

    async def progress(
        self, value: int | float, total: int | float, preview: Preview | None = None
    ) -> None:
        if self.executor.interrupt_flag.is_set():
            raise Interrupted
        value = min(value, total)
        hub = self.executor.hub
        self.tracker.update(self.node_id, value, total)
        self.send("progress_state", self.tracker.message())
        modern = self.client_id is not None and hub.supports_preview_metadata(self.client_id)
        if preview is not None and modern:
            meta = {
                "node_id": self.node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": self.node_id,
                "parent_node_id": None,
                "real_node_id": self.node_id,
                "image_type": f"image/{preview.image_format.lower()}",
            }
            blob = json.dumps(meta).encode()
            payload = struct.pack(">I", len(blob)) + blob + preview.data
            hub.send_sync(PREVIEW_IMAGE_WITH_METADATA, payload, self.client_id)
        progress = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id}
        self.send("progress", progress)
        if preview is not None and not modern:
            code = 1 if preview.image_format == "JPEG" else 2
            hub.send_sync(PREVIEW_IMAGE, struct.pack(">I", code) + preview.data, self.client_id)

    def send_text(self, text: str) -> None:
        node = self.node_id.encode()
        payload = struct.pack(">I", len(node)) + node + text.encode()
        self.executor.hub.send_sync(TEXT, payload, None)

    # -- message helpers ----------------------------------------------------
    def send(self, event: str, data: Any) -> None:
        """To the client, or to everyone when the prompt has no client id."""
        self.executor.hub.send_sync(event, data, self.client_id)

    def send_to_client(self, event: str, data: Any) -> None:
        """Only to the client; dropped when the prompt has no client id."""
        if self.client_id is not None:
            self.executor.hub.send_sync(event, data, self.client_id)

    def add_message(self, event: str, data: JsonDict, broadcast: bool) -> None:
        """A lifecycle message that is also kept in the history entry."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.executor.hub.send_sync(event, data, self.client_id)


class Executor:
    """The single worker that takes prompts off the queue and runs them."""

    def __init__(
        self,
        queue: PromptQueue,
        hub: SocketHub,
        catalog: NodeCatalog,
        folders: Folders,
        timing: Timing,
    ) -> None:
        self.queue = queue
        self.hub = hub
        self.catalog = catalog
        self.folders = folders
        self.timing = timing
        self.interrupt_flag = asyncio.Event()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self._cache: dict[Any, CacheEntry] = {}

    def interrupt(self) -> None:
        self.interrupt_flag.set()

    def reconnect_node(self, sid: str) -> str | None:
        """The node to announce to a socket reconnecting as the running prompt's client."""
        return self.last_node_id if self.client_id == sid else None

    async def run_forever(self) -> None:
        while True:
            task_id, item = await self.queue.get()
            run = _Run(self, item)
            result: JsonDict = {"outputs": {}, "meta": {}}
            success = False
            try:
                success, result = await self._execute(run)
            except Exception:  # a simulator bug must not kill the worker
                log.exception("simulator failed to execute prompt %s", item.prompt_id)
            status = HistoryStatus("success" if success else "error", success, run.messages)
            self.queue.task_done(task_id, result, status)
            if self.client_id is not None:
                self.hub.send_sync(
                    "executing", {"node": None, "prompt_id": item.prompt_id}, self.client_id
                )

    async def _execute(self, run: _Run) -> tuple[bool, JsonDict]:
        prompt = run.item.prompt
        self.client_id = run.client_id
        self.interrupt_flag.clear()
        run.add_message("execution_start", {"prompt_id": run.prompt_id}, broadcast=False)
        keys = cache_keys(prompt, self._is_changed(prompt), self._takes_unique_id(prompt))
        live = set(keys.values())
        self._cache = {k: v for k, v in self._cache.items() if k in live}
        cached = [node_id for node_id in prompt if keys[node_id] in self._cache]
        run.add_message(
            "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id}, broadcast=False
        )
        self._flood(run)
        order = ExecutionOrder(
            prompt,
            is_output=lambda n: self.catalog.is_output(prompt[n]["class_type"]),
            is_cached=lambda n: keys.get(n) in self._cache,
        )
        for output in run.item.outputs:
            order.add(output)
        success = True
        while not order.empty():
            node_id = order.next()
            if not await self._run_node(run, node_id, keys):
                success = False
                break
            order.done(node_id)
        if success:
            run.add_message("execution_success", {"prompt_id": run.prompt_id}, broadcast=False)
        outputs: JsonDict = {}
        meta: JsonDict = {}
        for node_id in prompt:
            entry = self._cache.get(keys[node_id])
            if entry is not None and entry.ui is not None:
                outputs[node_id] = entry.ui
                meta[node_id] = _meta(node_id)
        self.last_node_id = None
        return success, {"outputs": outputs, "meta": meta}

    def _flood(self, run: _Run) -> None:
        """The ``ws_flood_node_changes`` fault: node changes, as fast as the socket takes them."""
        count = self.hub.faults().ws_flood_node_changes
        nodes = list(run.item.prompt)
        for index in range(count):
            node = nodes[index % len(nodes)]
            data = {"node": node, "display_node": node, "prompt_id": run.prompt_id}
            run.send_to_client("executing", data)

    async def _run_node(self, run: _Run, node_id: str, keys: Mapping[str, Any]) -> bool:
        """Run (or replay from cache) one node; False when the prompt must stop."""
        node = run.item.prompt[node_id]
        class_type = node["class_type"]
        run.node_id = node_id
        entry = self._cache.get(keys[node_id])
        if entry is not None:
            run.send_to_client("executed", _executed(node_id, entry.ui, run.prompt_id))
            run.tracker.finish(node_id)
            run.send("progress_state", run.tracker.message())
            return True
        run.tracker.start(node_id)
        run.send("progress_state", run.tracker.message())
        if run.client_id is not None:
            self.last_node_id = node_id
            run.send_to_client(
                "executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id}
            )
        inputs: dict[str, Any] = {}
        try:
            if self.interrupt_flag.is_set():
                raise Interrupted
            inputs = self._inputs(node["inputs"], keys)
            if class_type == self.timing.fail_node_class():
                raise SimulatedFailure(f"Simulated failure of {class_type} (fail_node_class fault)")
            result: NodeOutput = await self.catalog.definition(class_type).run(run, inputs)
        except Interrupted:
            data = {
                "prompt_id": run.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(run.executed),
            }
            run.add_message("execution_interrupted", data, broadcast=True)
            return False
        except Exception as exc:
            run.add_message("execution_error", _error(run, node_id, class_type, exc, inputs), False)
            return False
        self._cache[keys[node_id]] = CacheEntry(result.values, result.ui or None)
        if result.ui:
            run.send_to_client("executed", _executed(node_id, result.ui, run.prompt_id))
        run.tracker.finish(node_id)
        run.send("progress_state", run.tracker.message())
        run.executed.append(node_id)
        return True

    def _inputs(self, raw: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if is_link(value):
                entry = self._cache[keys[value[0]]]
                values[name] = entry.values[value[1]]
            else:
                values[name] = value
        return values

    def _is_changed(self, prompt: JsonDict) -> Callable[[str], object]:
        def is_changed(node_id: str) -> object:
            node = prompt[node_id]
            definition = self.catalog.definition(node["class_type"])
            if definition.is_changed is None:
                return None
            return definition.is_changed(self.folders, node["inputs"])

        return is_changed

    def _takes_unique_id(self, prompt: JsonDict) -> Callable[[str], bool]:
        return lambda node_id: self.catalog.takes_unique_id(prompt[node_id]["class_type"])


def _meta(node_id: str) -> JsonDict:
    return {
        "node_id": node_id,
        "display_node": node_id,
        "parent_node": None,
        "real_node_id": node_id,
    }


def _executed(node_id: str, output: JsonDict | None, prompt_id: str) -> JsonDict:
    return {"node": node_id, "display_node": node_id, "output": output, "prompt_id": prompt_id}


def _shown(value: Any) -> Any:
    """How ComfyUI shows an input in execution_error: JSON scalars as is, else str()."""
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, SimulatedFailure):
        return "RuntimeError"
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _error(
    run: _Run, node_id: str, class_type: str, exc: Exception, inputs: Mapping[str, Any]
) -> JsonDict:
    return {
        "prompt_id": run.prompt_id,
        "node_id": node_id,
        "node_type": class_type,
        "executed": list(run.executed),
        "exception_message": f"{exc}\n",
        "exception_type": _type_name(exc),
        "traceback": traceback.format_tb(exc.__traceback__),
        "current_inputs": {name: [_shown(value)] for name, value in inputs.items()},
        "current_outputs": list(run.item.prompt),
    }

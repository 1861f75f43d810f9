"""``Simulator``: a ComfyUI stand-in that speaks the real protocol over real sockets.

Start it, point a client at ``sim.url``, inject faults through ``sim.faults``.
``stop()`` behaves like SIGTERM on ComfyUI (sockets dropped without a close
frame, running work lost) and ``restart()`` brings it back on the same port,
by default with empty queue and history like a real restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .app import build_app
from .executor import Executor, Timing
from .faults import Faults
from .files import Folders
from .nodes import ALL_NODES, NodeCatalog
from .queue import PromptQueue
from .services import Services
from .ws import SocketHub

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = (
    "sd_xl_base_1.0.safetensors",
    "realisticVisionV51_v51VAE.safetensors",
    "tiny_random_sd15.safetensors",
)
DEFAULT_MOTION_MODULES = ("mm_sd_v15_v2.ckpt",)
DEFAULT_LORAS = ("detail.safetensors", "watercolor.safetensors")
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


class Simulator:
    """A simulated ComfyUI 0.3.64 server (HTTP + WebSocket) with fault injection."""

    def __init__(
        self,
        output_dir: Path | None = None,
        faults: Faults | None = None,
        step_seconds: float = 0.02,
        checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
        motion_modules: Sequence[str] = DEFAULT_MOTION_MODULES,
        *,
        loras: Sequence[str] = DEFAULT_LORAS,
        time_scale: float = 1.0,
        input_dir: Path | None = None,
        temp_dir: Path | None = None,
        preview_method: str = "none",
    ) -> None:
        if preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview_method must be one of {', '.join(PREVIEW_METHODS)}")
        self.preview_method = preview_method
        """Like ComfyUI's ``--preview-method``: anything but none makes KSampler send previews."""
        self.faults = faults or Faults()
        self.step_seconds = step_seconds
        self.time_scale = time_scale
        self.folders = Folders(output_dir, input_dir, temp_dir)
        self.checkpoints = tuple(checkpoints)
        self.motion_modules = tuple(motion_modules)
        self.loras = tuple(loras)
        self.submitted_prompt_ids: list[str] = []
        """Every prompt id POST /prompt accepted, in order (tests check exactly-once)."""
        self.submitted_client_ids: list[str] = []
        """The ``client_id`` each of those came with ("" when none)."""
        self.deleted_prompt_ids: list[str] = []
        """Prompt ids POST /queue ``delete`` took out of the pending queue."""
        self.host = "127.0.0.1"
        self.port = 0
        self._queue: PromptQueue | None = None
        self._kept_queue: PromptQueue | None = None
        self._services: Services | None = None
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None

    # -- public API -----------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL; stays valid across stop()/restart() once a port was assigned."""
        if not self.port:
            raise RuntimeError("simulator was never started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0 picks a free one) and start executing."""
        if self._runner is not None:
            raise RuntimeError("simulator is already running")
        queue = self._kept_queue
        self._kept_queue = None
        if queue is None:  # a fresh process: empty queue and history, temp/ wiped
            queue = PromptQueue(on_change=lambda: None)
            self.folders.wipe_temp()
        hub = SocketHub(self._faults, queue.remaining, lambda sid: None)
        queue.on_change = hub.broadcast_status
        catalog = NodeCatalog(
            ALL_NODES, self.folders, self.checkpoints, self.motion_modules, self.loras
        )
        timing = Timing(
            self._step_seconds,
            self._time_scale,
            lambda: self.faults.fail_node_class,
            lambda: self.preview_method != "none",
        )
        executor = Executor(queue, hub, catalog, self.folders, timing)
        hub.reconnect_node = executor.reconnect_node
        services = Services(
            queue,
            hub,
            executor,
            catalog,
            self.folders,
            self._faults,
            self.submitted_prompt_ids,
            self.submitted_client_ids,
            self.deleted_prompt_ids,
        )
        runner = web.AppRunner(build_app(services), shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.host = host
        self.port = int(runner.addresses[0][1])
        self._runner = runner
        self._queue = queue
        self._services = services
        hub.start()
        self._worker = asyncio.create_task(executor.run_forever(), name="sim-executor")
        log.info("ComfyUI simulator listening on %s", self.url)

    async def stop(self) -> None:
        """Stop like a SIGTERM'd ComfyUI: drop sockets (1006), abandon the running prompt."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._services is not None:
            await self._services.hub.stop()
        await runner.cleanup()

    async def restart(self, keep_state: bool = False) -> None:
        """Stop, then start on the same host and port.

        ``keep_state=False`` (real ComfyUI): queue, history, prompt counter and
        execution cache are gone and temp/ is wiped; output/ and input/ stay.
        ``keep_state=True`` keeps queue (the interrupted prompt runs again),
        history and counter.
        """
        host, port = self.host, self.port
        queue = self._queue
        await self.stop()
        if keep_state and queue is not None:
            queue.requeue_running()
            self._kept_queue = queue
        await self.start(host, port)

    async def close(self) -> None:
        """Stop and remove the private scratch folders."""
        await self.stop()
        self.folders.cleanup()

    def set_checkpoints(self, names: Sequence[str]) -> None:
        """Change the checkpoint files this ComfyUI has (a model added or removed)."""
        self.checkpoints = tuple(names)
        if self._services is not None:
            self._services.catalog.checkpoints = sorted(names)

    def broadcast_status(self) -> None:
        """Send every socket a ``status`` message now, as a queue change does."""
        if self._services is not None:
            self._services.hub.broadcast_status()

    async def __aenter__(self) -> Simulator:
        if not self.running:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------
    def _faults(self) -> Faults:
        return self.faults

    def _step_seconds(self) -> float:
        override = self.faults.step_seconds
        return self.step_seconds if override is None else override

    def _time_scale(self) -> float:
        override = self.faults.time_scale
        return self.time_scale if override is None else override

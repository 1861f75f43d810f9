"""Readiness for Kubernetes: SERVING while a ComfyUI backend is reachable and
the artifact store answers, NOT_SERVING otherwise.

Three names are published: ``""`` (overall), the GenerationService name
(same), and ``liveness``, which stays SERVING while the process runs so a
ComfyUI outage never restarts the gateway, unless a supervised task was
given up on (:meth:`HealthMonitor.task_gave_up`): the process then cannot
mend itself, and a NOT_SERVING liveness lets Kubernetes restart it.

Backends report their sockets opening and closing at once (``nudge``); the
store has no such signal and is asked every ``STORE_CHECK_SECONDS``. Each
check is an S3 HeadBucket, a millisecond or two of botocore work on the
event loop that every relayed progress event behind it waits for, and a
billed request on AWS; a kubelet probing every 10 s gains nothing from more.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from ..backends import BackendPool
from ..storage import ArtifactStore, StorageError
from ..tasks import within

log = logging.getLogger(__name__)

LIVENESS_SERVICE = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STORE_CHECK_SECONDS = 10.0


class HealthMonitor:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        pool: BackendPool,
        store: ArtifactStore,
        service_name: str,
        *,
        interval_seconds: float = STORE_CHECK_SECONDS,
    ) -> None:
        self.servicer = servicer
        self.pool = pool
        self.store = store
        self.service_name = service_name
        self.interval = interval_seconds
        self.store_ok = False
        self.serving: bool | None = None
        self.alive: bool | None = None
        self.dead_tasks: set[str] = set()
        """Supervised tasks given up on; any makes liveness NOT_SERVING."""
        self._changed = asyncio.Event()

    def task_gave_up(self, name: str, exc: BaseException) -> None:
        """A supervised task will not run again: fail liveness at once."""
        log.critical("task %s cannot recover; liveness is now NOT_SERVING", name)
        self.dead_tasks.add(name)
        self.nudge()

    async def _check_liveness(self) -> None:
        alive = not self.dead_tasks
        if alive != self.alive:
            self.alive = alive
            await self.servicer.set(LIVENESS_SERVICE, SERVING if alive else NOT_SERVING)

    async def check_once(self) -> bool:
        await self._check_liveness()
        try:
            await self.store.check()
            self.store_ok = True
        except StorageError as exc:
            if self.store_ok:
                log.warning("artifact store unreachable: %s", exc)
            self.store_ok = False
        serving = self.store_ok and bool(self.pool.healthy) and not self.dead_tasks
        if serving != self.serving:
            self.serving = serving
            status = SERVING if serving else NOT_SERVING
            for name in ("", self.service_name):
                await self.servicer.set(name, status)
            log.info("health: %s", "SERVING" if serving else "NOT_SERVING")
        return serving

    def nudge(self) -> None:
        """Re-check now (a backend socket opened or closed)."""
        self._changed.set()

    async def run(self) -> None:
        while True:
            await self.check_once()
            self._changed.clear()
            await within(self._changed.wait(), self.interval)

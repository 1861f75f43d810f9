"""The gateway process: gRPC server, job service, backends and store, wired
together and shut down in order.

Shutdown: health goes NOT_SERVING, new calls are refused, open streams and
uploads get the grace period, then backends and the store are closed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.callers import token_names
from .api.servicer import GenerationServicer
from .backends import Backend, BackendPool
from .backends.discovery import Discovery, Resolver, resolve_all
from .config import Settings
from .inputs import InputUploader
from .jobs.service import JobService, JobServiceSettings
from .observability.health import HealthMonitor
from .observability.interceptors import CallInterceptor, DrainGate, TokenAuthInterceptor
from .observability.metrics import Metrics
from .observability.metrics_server import MetricsServer
from .state import open_job_store
from .storage import ArtifactStore, make_store
from .tasks import TaskSet
from .v1 import generation_service_pb2, generation_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


def read_tokens(settings: Settings) -> dict[str, str]:
    """Accepted bearer tokens and the caller name each stands for."""
    lines = list(settings.auth_tokens)
    if settings.auth_token_file:
        lines += Path(settings.auth_token_file).read_text().splitlines()
    return token_names(lines)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    chain = (Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [chain], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ArtifactStore | None = None,
        resolver: Resolver = resolve_all,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings.storage)
        self.pool = BackendPool()
        self.metrics = Metrics()
        self.service = JobService(
            pool=self.pool,
            store=self.store,
            metrics=self.metrics,
            job_store=open_job_store(settings.state_path),
            settings=JobServiceSettings(
                max_queued_jobs=settings.max_queued_jobs,
                reconcile_interval_seconds=settings.reconcile_interval_seconds,
                max_finished_jobs=settings.max_finished_jobs,
                max_queued_jobs_per_caller=settings.max_queued_jobs_per_caller,
                backend_prefetch=settings.backend_prefetch,
            ),
        )
        self.service.tracker.backend_lost_after_seconds = settings.backend_lost_after_seconds
        self.discovery: Discovery | None = None
        if settings.comfyui_dns_discovery:
            self.discovery = Discovery(
                settings.comfyui_urls,
                add=self._add_backend,
                remove=self._remove_backend,
                resolver=resolver,
                interval_seconds=settings.dns_refresh_seconds,
            )
        self.health = health.aio.HealthServicer()
        self.monitor = HealthMonitor(self.health, self.pool, self.store, SERVICE_NAME)
        self.metrics.watch(
            lambda: (job.state for job in self.service.registry),
            lambda: (
                (b.url, b.healthy, len(self.service.core.jobs_on(b.url)), b.socket.reconnects)
                for b in self.pool
            ),
        )
        self.gate = DrainGate((health.SERVICE_NAME, reflection.SERVICE_NAME))
        self.metrics_server: MetricsServer | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks = TaskSet("gateway")
        self._stopped = False

    def _options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    def _add_backend(self, url: str) -> Backend:
        tracker = self.service.tracker

        async def connected(backend: Backend, first: bool) -> None:
            self.monitor.nudge()
            await tracker.on_connect(backend, first)

        def disconnected(backend: Backend) -> None:
            self.monitor.nudge()
            tracker.on_disconnect(backend)

        backend = Backend(
            url, on_message=tracker.on_message, on_connect=connected, on_disconnect=disconnected
        )
        self.pool.add(backend)
        self.service.add_backend(backend.url)
        backend.start()
        return backend

    async def start(self) -> None:
        """Start everything; on failure, undo what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _remove_backend(self, url: str) -> None:
        backend = self.pool.remove(url)
        if backend is not None:
            self.service.tracker.backend_removed(backend)
            await backend.close()
            self.monitor.nudge()

    async def _start(self) -> None:
        credentials = server_credentials(self.settings)
        tokens = read_tokens(self.settings)
        await self.store.start()
        if self.discovery is not None:
            await self.discovery.refresh()
            self._tasks.spawn(self.discovery.run(), "backend discovery")
        else:
            for url in self.settings.comfyui_urls:
                self._add_backend(url)
        await self.service.start()

        interceptors: list[grpc.aio.ServerInterceptor] = [CallInterceptor(self.metrics, self.gate)]
        if tokens:
            interceptors.append(
                TokenAuthInterceptor(list(tokens), (health.SERVICE_NAME, reflection.SERVICE_NAME))
            )
        server = grpc.aio.server(interceptors=interceptors, options=self._options())
        generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(
                self.service,
                InputUploader(self.pool),
                metrics=self.metrics,
                max_workflow_nodes=self.settings.max_workflow_nodes,
                token_names=tokens,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if not self.port:
            raise OSError(f"could not bind the gRPC port at {address}")
        await self.monitor.check_once()
        self._tasks.spawn(self.monitor.run(), "health monitor")
        await server.start()
        self.server = server
        if self.settings.metrics_port >= 0:
            self.metrics_server = MetricsServer(self.metrics.registry)
            await self.metrics_server.start(self.settings.metrics_host, self.settings.metrics_port)
        log.info(
            "gRPC server listening on %s (port %d, %s, %s)",
            address,
            self.port,
            "TLS" if credentials else "plaintext",
            "token auth" if tokens else "no auth",
        )

    async def wait_backends(self, timeout: float) -> bool:
        """Wait until every backend has its socket (for start-up and tests)."""
        results = await asyncio.gather(*(b.wait_connected(timeout) for b in self.pool))
        ok = all(results)
        if ok:
            await self.monitor.check_once()
        return ok

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._tasks.close()
        await self.health.enter_graceful_shutdown()
        self.gate.close()
        await self.gate.wait_idle(grace)
        await self.service.tasks.wait(max(0.0, deadline - loop.time()))
        if self.server is not None:
            await self.server.stop(max(0.0, min(1.0, deadline - loop.time())))
        await self.service.close()
        for backend in self.pool:
            await backend.close()
        await self.store.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()

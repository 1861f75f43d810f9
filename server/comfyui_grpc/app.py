"""The gateway process: gRPC server, job service, backends and store, wired
together and shut down in order.

Shutdown: health goes NOT_SERVING, new calls are refused, open streams and
uploads get the grace period, then backends and the store are closed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.callers import token_names
from .api.results import callback_body
from .api.servicer import GenerationServicer
from .api.wire_checks import generate_request_check
from .backends import Backend, BackendPool
from .backends.discovery import Discovery, Resolver, resolve_all
from .callbacks.delivery import Deliverer, DeliverySettings
from .callbacks.policy import AllowList
from .callbacks.signing import read_secrets
from .cluster.replica import Replica
from .config import Settings
from .inputs import InputUploader
from .jobs.service import JobService, JobServiceSettings
from .observability.health import HealthMonitor
from .observability.interceptors import CallInterceptor, DrainGate, TokenAuthInterceptor
from .observability.metrics import Metrics
from .observability.metrics_server import MetricsServer
from .redact import redact_database_url, redact_url
from .state import open_job_store
from .state.postgres import PostgresJobStore
from .storage import ArtifactStore, LocalArtifactStore, make_store
from .tasks import TaskSet
from .v1 import generation_service_pb2, generation_service_pb2_grpc
from .workflows.template_library import TemplateLibrary

log = logging.getLogger(__name__)

REPLICA_SETTLE_SECONDS = 10.0
"""At stop, how long a replica lets submissions and uploads under way finish
before it hands its backends over."""
REPLICA_FLUSH_SECONDS = 0.02
"""Least time between two job store writes when replicas share the store; news is
written as soon as it comes within that (streams on other replicas follow writes)."""

SERVICE_NAME = generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


def read_tokens(settings: Settings) -> dict[str, str]:
    """Accepted bearer tokens and the caller name each stands for."""
    lines = list(settings.auth_tokens)
    if settings.auth_token_file:
        lines += Path(settings.auth_token_file).read_text().splitlines()
    return token_names(lines)


def comfyui_headers(settings: Settings) -> dict[str, str]:
    """Headers for every ComfyUI request and handshake: ``--comfyui-header``,
    and the token of ``--comfyui-token-file`` as ``Authorization: Bearer``."""
    headers = dict(settings.comfyui_headers)
    if settings.comfyui_token_file:
        token = Path(settings.comfyui_token_file).read_text().strip()
        if not token or "\n" in token:
            raise ValueError(f"{settings.comfyui_token_file} must hold one token")
        headers["Authorization"] = f"Bearer {token}"
    return headers


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


class PortUnavailable(OSError):
    """A port the gateway was told to listen on cannot be had (usually another
    process holds it): one line for the operator, exit code 2 from the CLI."""

    def __init__(self, what: str, flag: str, host: str, port: int, why: str) -> None:
        super().__init__(
            f"{what} port {port} on {host} {why}; "
            f"stop the process holding it or choose another with {flag}"
        )


def bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, found by trying; "" when it can.

    Asked before gRPC binds: gRPC core only says that binding failed, in a
    log line of its own on stderr.
    """
    try:
        with socket.create_server((host.strip("[]"), port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "is already in use"
        return f"cannot be bound ({exc.strerror or exc})"
    return ""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ArtifactStore | None = None,
        resolver: Resolver = resolve_all,
        callback_resolver: Resolver = resolve_all,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings.storage)
        self.pool = BackendPool()
        self.metrics = Metrics()
        self.service = JobService(
            pool=self.pool,
            store=self.store,
            metrics=self.metrics,
            job_store=open_job_store(
                settings.state_path, url=settings.state_url, url_file=settings.state_url_file
            ),
            settings=JobServiceSettings(
                max_queued_jobs=settings.max_queued_jobs,
                reconcile_interval_seconds=settings.reconcile_interval_seconds,
                max_finished_jobs=settings.max_finished_jobs,
                max_queued_jobs_per_caller=settings.max_queued_jobs_per_caller,
                backend_prefetch=settings.backend_prefetch,
            ),
        )
        if isinstance(self.service.job_store, PostgresJobStore):
            self._share_with_replicas(self.service.job_store)
        self.service.tracker.backend_lost_after_seconds = settings.backend_lost_after_seconds
        self.service.tracker.collector.max_output_bytes = settings.max_output_bytes
        self.templates = TemplateLibrary(settings.templates_dir)
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
        self.service.tracker.on_give_up = self.monitor.task_gave_up
        self.metrics.watch(
            lambda: (job.state for job in self.service.registry),
            lambda: (
                (b.url, b.healthy, len(self.service.core.jobs_on(b.url)), b.socket.reconnects)
                for b in self.pool
            ),
            self._waiting_by_caller,
        )
        self.gate = DrainGate((health.SERVICE_NAME, reflection.SERVICE_NAME))
        self.metrics_server: MetricsServer | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks = TaskSet("gateway")
        self._comfyui_headers: dict[str, str] = {}
        self._stopped = False
        self.callback_allow = AllowList.parse(
            settings.callback_allow, allow_http=settings.callback_allow_http
        )
        self._callback_resolver = callback_resolver
        self.callbacks: Deliverer | None = None

    def _share_with_replicas(self, job_store: PostgresJobStore) -> None:
        """On PostgreSQL, this gateway is one of possibly several replicas."""
        settings = self.settings
        replica_id = settings.replica_id or (
            f"{socket.gethostname()}:{settings.port}"
            if settings.port
            else f"{socket.gethostname()}:pid{os.getpid()}"
        )
        if isinstance(self.store, LocalArtifactStore):
            log.warning(
                "job records are shared (--state-url) but artifacts go to the local directory "
                "%s: other replicas can serve them only if they share it; "
                "give replicas on several hosts one S3 bucket",
                self.store.root,
            )
        # Streams on other replicas follow this one's writes: write them soon.
        job_store.flush_interval = min(job_store.flush_interval, REPLICA_FLUSH_SECONDS)
        job_store.holder = replica_id
        self.service.share_with_replicas(
            Replica(
                service=self.service,
                store=job_store,
                pool=self.pool,
                replica_id=replica_id,
                lease_seconds=settings.lease_seconds,
            )
        )

    def _waiting_by_caller(self) -> dict[str, int]:
        """Waiting jobs by caller: the gateway's line, or with replicas the shared one."""
        replica = self.service.replica
        if isinstance(replica, Replica):
            return replica.waiting_by_caller
        return self.service.core.waiting_by_caller()

    def _options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Own the port: with SO_REUSEPORT a second gateway would bind the
            # same port silently and the kernel would split callers between them.
            ("grpc.so_reuseport", 0),
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
            url,
            on_message=tracker.on_message,
            on_connect=connected,
            on_disconnect=disconnected,
            headers=self._comfyui_headers,
            count_protocol_error=self.metrics.protocol_error,
            on_task_crash=self.metrics.task_crashed,
            on_task_give_up=self.monitor.task_gave_up,
            max_answer_bytes=self.settings.max_comfyui_answer_bytes,
            max_message_bytes=self.settings.max_comfyui_message_bytes,
        )
        self.pool.add(backend)
        self.service.add_backend(backend.url)
        backend.start()
        return backend

    def _deliverer(self) -> Deliverer:
        service = self.service

        async def body_of(job_id: str, attempt: int, last_error: str) -> bytes:
            return await callback_body(service, job_id, attempt, last_error)

        return Deliverer(
            allow=self.callback_allow,
            settings=DeliverySettings(
                secrets=tuple(read_secrets(self.settings.callback_secret_file)),
                max_age_seconds=self.settings.callback_max_age_seconds,
                retry_initial_seconds=self.settings.callback_retry_initial_seconds,
            ),
            job_store=service.job_store,
            body_of=body_of,
            lookup=service.registry.get,
            metrics=self.metrics,
            resolver=self._callback_resolver,
            on_give_up=self.monitor.task_gave_up,
        )

    async def start(self) -> None:
        """Start everything; on failure, undo what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _remove_backend(self, url: str) -> None:
        backend = self.pool.remove(redact_url(url))  # the pool knows backends by public name
        if backend is not None:
            self.service.tracker.backend_removed(backend)
            await backend.close()
            self.monitor.nudge()

    async def _start(self) -> None:
        credentials = server_credentials(self.settings)
        tokens = read_tokens(self.settings)
        self.metrics.known_callers = frozenset(tokens.values())
        self._comfyui_headers = comfyui_headers(self.settings)
        await self.store.start()
        if self.discovery is not None:
            await self.discovery.refresh()
            self._tasks.spawn(self.discovery.run(), "backend discovery")
        else:
            for url in self.settings.comfyui_urls:
                self._add_backend(url)
        if self.callback_allow.enabled:
            self.callbacks = self._deliverer()
            if self.service.replica is not None:
                self.callbacks.shared = self.service.replica.shared
            self.service.tracker.on_job_ended = self.callbacks.job_ended
        await self.service.start()
        if self.settings.templates_dir:
            self.templates.reload()
            interval = self.settings.templates_reload_seconds
            self._tasks.spawn_supervised(lambda: self.templates.watch(interval), "template reloads")
        if self.callbacks is not None:
            await self.callbacks.start()

        checks = {
            f"/{SERVICE_NAME}/Generate": generate_request_check(
                self.settings.max_workflow_nodes, self.settings.max_workflow_bytes
            )
        }
        interceptors: list[grpc.aio.ServerInterceptor] = [
            CallInterceptor(self.metrics, self.gate, request_checks=checks)
        ]
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
                max_workflow_bytes=self.settings.max_workflow_bytes,
                token_names=tokens,
                templates=self.templates,
                callback_allow=self.callback_allow,
                callbacks=self.callbacks,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        address = f"{self.settings.host}:{self.settings.port}"
        host, port = self.settings.host, self.settings.port
        if port and (why := bind_problem(host, port)):
            raise PortUnavailable("gRPC", "--port", host, port, why)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
            self.port = 0
        if not self.port:
            why = bind_problem(host, port) or "could not be bound"
            raise PortUnavailable("gRPC", "--port", host, port, why)
        await self.monitor.check_once()
        self._tasks.spawn(self.monitor.run(), "health monitor")
        await server.start()
        self.server = server
        if self.settings.metrics_port >= 0:
            self.metrics_server = MetricsServer(self.metrics.registry)
            metrics_host = self.settings.metrics_host or self.settings.host  # where gRPC binds
            try:
                await self.metrics_server.start(metrics_host, self.settings.metrics_port)
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else str(exc)
                port = self.settings.metrics_port
                raise PortUnavailable(
                    "metrics", "--metrics-port", metrics_host, port, why
                ) from None
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
        if self.service.replica is not None:
            # Other replicas take the backends over now, not when the streams end.
            await self.service.replica.stop(settle_seconds=min(grace, REPLICA_SETTLE_SECONDS))
        await self.gate.wait_idle(max(0.0, deadline - loop.time()))
        await self.service.tasks.wait(max(0.0, deadline - loop.time()))
        if self.server is not None:
            await self.server.stop(max(0.0, min(1.0, deadline - loop.time())))
        left = self._jobs_left()
        if self.callbacks is not None:
            await self.callbacks.close()
        await self.service.close()
        for backend in self.pool:
            await backend.close()
        await self.store.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.server is not None:  # a start that failed has said why already
            log.info("stopped; %s", left)

    def _jobs_left(self) -> str:
        """Unfinished jobs at stop and where they are, for the "stopped" line."""
        open_jobs = [job for job in self.service.registry if not job.terminal]
        if not open_jobs:
            return "jobs left: 0"
        handed = Counter(job.state.value for job in open_jobs if job.backend)
        waiting = len(open_jobs) - sum(handed.values())
        parts = []
        if handed:
            by_state = ", ".join(f"{n} {state}" for state, n in sorted(handed.items()))
            parts.append(f"{sum(handed.values())} ({by_state}) in ComfyUI")
        if waiting:
            parts.append(f"{waiting} waiting in the gateway's line")
        recorded_in = self.settings.state_path or (
            redact_database_url(self.settings.state_url) or self.settings.state_url_file
        )
        where = (
            f"recorded in {recorded_in}, resumed at the next start"
            if recorded_in
            else "not recorded (no --state-path): ComfyUI may finish the ones it holds, "
            "unstored; the others are gone"
        )
        return f"jobs left: {len(open_jobs)}: {'; '.join(parts)}; {where}"

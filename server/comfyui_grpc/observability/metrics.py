"""Prometheus metrics, named by Prometheus conventions (base units, ``_total``
for counters, ``_seconds`` and ``_bytes``).

Each gateway owns a registry, so several can run in one process (tests).
Hot-path label children are bound once. Gauges that describe current state
(jobs per state, backend up and queue depth) are read at scrape time from
the live objects instead of being kept in step by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..jobs.model import JobState

NAMESPACE = "comfyui_grpc"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _StateCollector(Collector):
    def __init__(
        self,
        job_states: Callable[[], Iterable[JobState]],
        backends: Callable[[], Iterable[tuple[str, bool, int, int]]],
        waiting: Callable[[], Mapping[str, int]],
        caller_label: Callable[[str], str],
    ) -> None:
        self._job_states = job_states
        self._backends = backends
        self._waiting = waiting
        self._caller_label = caller_label

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = dict.fromkeys(JobState, 0)
        for state in self._job_states():
            counts[state] += 1
        jobs = GaugeMetricFamily(
            f"{NAMESPACE}_jobs", "Jobs the gateway holds, by state.", labels=["state"]
        )
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        up = GaugeMetricFamily(
            f"{NAMESPACE}_backend_up",
            "1 while the gateway holds a socket to the ComfyUI backend.",
            labels=["backend"],
        )
        depth = GaugeMetricFamily(
            f"{NAMESPACE}_backend_queue_depth",
            "Jobs of this gateway waiting or running on the backend.",
            labels=["backend"],
        )
        # A count that only rises is a counter (exposed as ..._total), so
        # rate() and increase() work on it.
        reconnects = CounterMetricFamily(
            f"{NAMESPACE}_backend_socket_reconnects",
            "Times the socket to the backend was reopened since start.",
            labels=["backend"],
        )
        for url, healthy, outstanding, reopened in self._backends():
            up.add_metric([url], 1 if healthy else 0)
            depth.add_metric([url], outstanding)
            reconnects.add_metric([url], reopened)
        yield up
        yield depth
        yield reconnects
        waiting = GaugeMetricFamily(
            f"{NAMESPACE}_caller_waiting_jobs",
            "Jobs waiting in the gateway's line (with replicas: the shared line), by caller.",
            labels=["caller"],
        )
        by_label: dict[str, int] = {}
        for caller, count in self._waiting().items():
            label = self._caller_label(caller)
            by_label[label] = by_label.get(label, 0) + count
        for label, count in sorted(by_label.items()):
            waiting.add_metric([label], count)
        yield waiting


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_handled = Counter(
            "server_handled",
            "RPCs completed, by method and status code.",
            ["grpc_method", "grpc_code"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "server_handling_seconds",
            "Time to complete an RPC (streams: until the stream ends).",
            ["grpc_method"],
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_finished = Counter(
            "jobs_finished",
            "Jobs that reached a terminal state, by state.",
            ["state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.known_callers: frozenset[str] = frozenset()
        """Caller names from the token file: the only ones used as label values."""
        self.caller_queue_wait = Histogram(
            "caller_queue_wait_seconds",
            "Time from submission until ComfyUI started the job, by caller.",
            ["caller"],
            namespace=NAMESPACE,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self._wait_children: dict[str, Histogram] = {}
        self.queue_wait = Histogram(
            "job_queue_wait_seconds",
            "Time from submission until ComfyUI started the job.",
            namespace=NAMESPACE,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.execution = Histogram(
            "job_execution_seconds",
            "Time ComfyUI spent executing a job.",
            namespace=NAMESPACE,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.upload = Histogram(
            "job_upload_seconds",
            "Time to store a job's outputs.",
            namespace=NAMESPACE,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "artifact_uploaded_bytes",
            "Bytes stored in the artifact store.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.upload_busy_seconds = Counter(
            "artifact_upload_seconds",
            "Seconds spent copying artifacts into the store.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.active_streams = Gauge(
            "progress_streams",
            "Open StreamProgress streams.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.coalesced_events = Counter(
            "progress_events_coalesced",
            "Progress events merged away for slow stream readers.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.protocol_errors = Counter(
            "backend_protocol_errors",
            "Answers and messages from a ComfyUI backend that were malformed or too large, "
            "by kind.",
            ["backend", "kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.task_crashes = Counter(
            "task_crashes",
            "Unexpected exceptions in long-lived tasks (each one was restarted or given up on).",
            ["task"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.callback_deliveries = Counter(
            "callback_deliveries",
            "Completion callbacks that reached an end, by outcome: delivered, rejected (a "
            "final 4xx or a redirect), refused (an address --callback-allow does not name), "
            "expired (--callback-max-age passed), job_missing.",
            ["outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.callback_attempts = Histogram(
            "callback_attempts",
            "Attempts a completion callback took, counted when it reached an end.",
            namespace=NAMESPACE,
            buckets=(1, 2, 3, 5, 8, 13, 21, 50, 100),
            registry=r,
        )
        self._finished_children = {
            state: self.jobs_finished.labels(state.value) for state in JobState if state.terminal
        }

    def watch(
        self,
        job_states: Callable[[], Iterable[JobState]],
        backends: Callable[[], Iterable[tuple[str, bool, int, int]]],
        waiting: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.registry.register(_StateCollector(job_states, backends, waiting, self.caller_label))

    def caller_label(self, caller: str) -> str:
        """A caller as a label value: names from the token file and ``anonymous`` as
        they are, anyone else (client certificates) as ``other``, so the label's
        values are bounded by the token file."""
        return caller if caller in self.known_callers or caller == "anonymous" else "other"

    def caller_waited(self, caller: str, seconds: float) -> None:
        label = self.caller_label(caller)
        child = self._wait_children.get(label)
        if child is None:
            child = self._wait_children[label] = self.caller_queue_wait.labels(label)
        child.observe(seconds)

    def protocol_error(self, backend: str, kind: str) -> None:
        self.protocol_errors.labels(backend, kind).inc()

    def task_crashed(self, task: str, exc: BaseException) -> None:
        self.task_crashes.labels(task).inc()

    def callback_finished(self, outcome: str, attempts: int) -> None:
        self.callback_deliveries.labels(outcome).inc()
        self.callback_attempts.observe(attempts)

    def job_finished(self, state: JobState) -> None:
        child = self._finished_children.get(state)
        if child is not None:
            child.inc()

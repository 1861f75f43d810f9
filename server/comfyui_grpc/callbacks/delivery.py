"""Delivering completion callbacks: at least once, signed, only where allowed.

Each job with a callback has one record in the job store (``callbacks``
table): written ``waiting`` when Generate accepts the job, made ``pending``
when the job ends, then ``delivered`` or ``failed``. Every attempt's outcome
is written before the next one is scheduled, so a restart picks the pending
ones up where they stood (an attempt cut short by the restart is sent again:
receivers deduplicate on ``X-ComfyUI-GRPC-Delivery``).

One supervised loop wakes when a delivery is due and sends it on its own
task (at most ``concurrency`` at once, so one slow receiver delays no
other). Sending resolves the host itself, checks every address against the
allow list, then connects to a checked address with the URL's name as Host
header and TLS server name: a name that resolves to loopback or a metadata
address is never called unless that network is listed, however DNS changes
between the check and the connection. Redirects are not followed, proxies
from the environment are ignored, time and the bytes read are bounded.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from ..backends.discovery import Resolver, resolve_all
from ..errors import NotFound, Unavailable
from ..jobs.job import Job
from ..observability.metrics import Metrics
from ..state import CallbackRecord, JobStore
from ..tasks import CrashHandler, TaskSet, within
from . import signing
from .policy import AllowList, parse_address

log = logging.getLogger(__name__)

SHARED_SWEEP_SECONDS = 2.0
"""With replicas: how often deliveries left by a replica that died are looked for."""


class SharedDeliveries(Protocol):
    """Deliveries in a store several replicas share
    (:class:`~comfyui_grpc.cluster.shared_state.SharedState`): each is sent
    by the replica that holds it; one left by a replica that died is taken
    over by another."""

    async def callback_due(self, job_id: str, now: float) -> CallbackRecord | None:
        """Make the job's waiting delivery due and this replica's (None: not waiting)."""
        ...

    async def claim_callbacks(self, now: float) -> list[CallbackRecord]:
        """Due deliveries no live replica holds (and this one's own), now this one's."""
        ...


BodyOf = Callable[[str, int, str], Awaitable[bytes]]
"""(job id, attempt number, last error) -> the JSON body; raises NotFound for an unknown job."""
JobLookup = Callable[[str], Job | None]

USER_AGENT = "comfyui-grpc-callbacks/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    secrets: tuple[bytes, ...]
    """The first signs; the rest are accepted by receivers during a rotation."""
    max_age_seconds: float = 24 * 3600
    """Retries stop this long after the job ended."""
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 600.0
    timeout_seconds: float = 10.0
    """For one attempt: connecting, sending and reading the status line."""
    concurrency: int = 16


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: ``done`` (delivered or final), else retry after ``retry_after``."""

    delivered: bool
    final: str = ""
    """For a failure that is not retried: the metrics outcome."""
    error: str = ""
    retry_after: float | None = None


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential from ``initial``, capped, with jitter (half to all of it)."""
    delay: float = min(maximum, initial * 2 ** min(attempt - 1, 30))
    return delay * rng.uniform(0.5, 1.0)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Deliverer:
    def __init__(
        self,
        *,
        allow: AllowList,
        settings: DeliverySettings,
        job_store: JobStore,
        body_of: BodyOf,
        lookup: JobLookup,
        metrics: Metrics,
        resolver: Resolver = resolve_all,
        clock: Callable[[], float] = time.time,
        on_give_up: CrashHandler | None = None,
    ) -> None:
        self.allow = allow
        self.settings = settings
        self.job_store = job_store
        self.body_of = body_of
        self.lookup = lookup
        self.metrics = metrics
        self.resolver = resolver
        self.clock = clock
        self.on_give_up = on_give_up
        self._open: dict[str, CallbackRecord] = {}
        self._sending: set[str] = set()
        self._wakeup = asyncio.Event()
        self._tasks = TaskSet("callbacks")
        self._client: httpx.AsyncClient | None = None
        self._rng = random.Random()
        self.shared: SharedDeliveries | None = None
        """Set when replicas share the store: deliveries go by who holds them."""

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Take back the open deliveries from the store; start the loop.

        Runs after the job service started, so jobs from before a restart are
        in the registry: a waiting record whose job already ended becomes due.
        """
        for record in await self._open_records():
            if record.job_id in self._open:
                continue  # its job ended while the service started
            if record.state == "waiting":
                record = await self._waiting_after_restart(record)
            self._remember(record)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # a proxy would connect to a name we did not check
            timeout=httpx.Timeout(self.settings.timeout_seconds),
            # No reuse: a pooled connection is keyed by address, not by TLS name.
            limits=httpx.Limits(
                max_connections=self.settings.concurrency, max_keepalive_connections=0
            ),
            headers={"User-Agent": USER_AGENT},
        )
        self._tasks.spawn_supervised(
            self._run, "callback deliveries", on_crash=self.metrics.task_crashed,
            on_give_up=self.on_give_up,
        )  # fmt: skip
        if self.shared is not None:
            self._tasks.spawn_supervised(
                self._sweep_forever, "callbacks left by other replicas",
                on_crash=self.metrics.task_crashed, on_give_up=self.on_give_up,
            )  # fmt: skip

    async def _open_records(self) -> list[CallbackRecord]:
        if self.shared is None:
            return await self.job_store.open_callbacks()
        # Only the ones this replica may send; the others are their holders'.
        return await self.shared.claim_callbacks(self.clock())

    async def _sweep_forever(self) -> None:
        assert self.shared is not None
        while True:
            await asyncio.sleep(SHARED_SWEEP_SECONDS)
            try:
                records = await self.shared.claim_callbacks(self.clock())
            except Unavailable as exc:
                log.warning("could not look for callbacks left by other replicas: %s",
                            exc.message)  # fmt: skip
                continue
            for record in records:
                if record.job_id not in self._open and record.job_id not in self._sending:
                    log.info("callback taken over from a replica that stopped",
                             extra={"job_id": record.job_id})  # fmt: skip
                    self._remember(record)

    async def close(self) -> None:
        await self._tasks.close()
        if self._client is not None:
            await self._client.aclose()

    async def _waiting_after_restart(self, record: CallbackRecord) -> CallbackRecord:
        job = self.lookup(record.job_id) or await self.job_store.load(record.job_id)
        if job is None:
            return replace(record, state="failed", last_error="the job was never recorded")
        if not job.terminal:
            return record  # its end is still to come
        ended = job.end_time or self.clock()
        return replace(record, state="pending", due_time=ended, next_attempt_time=ended)

    # -- hooks -----------------------------------------------------------------------

    async def register(self, job: Job) -> None:
        """At Generate: record the callback before the job can end (survives a crash)."""
        if not job.spec.callback_url or job.job_id in self._open:
            return
        record = await self.job_store.add_callback(
            CallbackRecord(
                job_id=job.job_id,
                delivery_id=str(uuid.uuid4()),
                url=job.spec.callback_url,
                updated=self.clock(),
            )
        )
        if self.shared is not None:
            return  # the replica that holds the job when it ends sends it
        if job.job_id not in self._open and record.state == "waiting":
            self._open[job.job_id] = record

    def job_ended(self, job: Job) -> None:
        """The job reached a terminal state: its callback is due now."""
        if not job.spec.callback_url:
            return
        if self.shared is not None:
            if not self._tasks.closed:
                self._tasks.spawn(self._due_shared(job.job_id), f"callback due {job.job_id}")
            return
        now = self.clock()
        record = self._open.get(job.job_id) or CallbackRecord(
            job_id=job.job_id, delivery_id=str(uuid.uuid4()), url=job.spec.callback_url
        )
        if record.state != "waiting" or self._tasks.closed:
            return  # (closed: shutting down; the stored record is taken back at the next start)
        record = replace(record, state="pending", due_time=now, next_attempt_time=now, updated=now)
        self._remember(record)
        self._tasks.spawn(self._save(record), f"callback record {job.job_id}")

    async def _due_shared(self, job_id: str) -> None:
        assert self.shared is not None
        try:
            record = await self.shared.callback_due(job_id, self.clock())
        except Unavailable as exc:
            # Still waiting in the store: the sweep of some replica makes it due.
            log.warning("could not make the callback due: %s", exc.message,
                        extra={"job_id": job_id})  # fmt: skip
            return
        if record is not None:
            self._remember(record)

    async def refresh(self, job: Job) -> None:
        """Copy the delivery's state onto ``job`` (one read from the store, e.g. after
        a restart, when the job was loaded rather than followed)."""
        if not job.spec.callback_url or job.callback_state in ("delivered", "failed"):
            return  # no callback, or one that has ended: nothing will change
        record = self._open.get(job.job_id) or await self.job_store.callback(job.job_id)
        if record is not None:
            self._show(job, record)

    # -- bookkeeping -----------------------------------------------------------------

    def _remember(self, record: CallbackRecord) -> None:
        if record.state in ("waiting", "pending"):
            self._open[record.job_id] = record
        else:
            self._open.pop(record.job_id, None)
        job = self.lookup(record.job_id)
        if job is not None:
            self._show(job, record)
        self._wakeup.set()

    @staticmethod
    def _show(job: Job, record: CallbackRecord) -> None:
        job.callback_state = record.state
        job.callback_attempts = record.attempts
        job.callback_last_error = record.last_error

    async def _save(self, record: CallbackRecord) -> None:
        try:
            await self.job_store.save_callback(record)
        except Exception:
            # Kept in memory and tried again with the next attempt's outcome.
            log.exception("could not record the callback of job %s", record.job_id)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            now = self.clock()
            waits: list[float] = []
            for record in list(self._open.values()):
                if record.state != "pending" or record.job_id in self._sending:
                    continue
                if record.next_attempt_time > now:
                    waits.append(record.next_attempt_time - now)
                elif len(self._sending) < self.settings.concurrency:
                    self._sending.add(record.job_id)
                    self._tasks.spawn(self._attempt(record), f"callback {record.job_id}")
            await within(self._wakeup.wait(), min(waits, default=60.0))

    async def _attempt(self, record: CallbackRecord) -> None:
        try:
            await self._deliver(record)
        finally:
            self._sending.discard(record.job_id)
            self._wakeup.set()

    async def _deliver(self, record: CallbackRecord) -> None:
        attempt = record.attempts + 1
        try:
            outcome = await self._try(record, attempt)
        except Exception as exc:
            # Never leave a delivery due at once: that would spin. Back off as for a 5xx.
            log.exception("callback attempt failed unexpectedly", extra={"job_id": record.job_id})
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
        now = self.clock()
        if outcome.delivered:
            record = replace(record, state="delivered", attempts=attempt, last_error="")
            self.metrics.callback_finished("delivered", attempt)
            log.info("callback delivered (attempt %d)", attempt, extra={"job_id": record.job_id})
        elif outcome.final:
            record = replace(record, state="failed", attempts=attempt, last_error=outcome.error)
            self.metrics.callback_finished(outcome.final, attempt)
            log.warning(
                "callback not delivered: %s", outcome.error, extra={"job_id": record.job_id}
            )
        else:
            delay = backoff(
                attempt, self.settings.retry_initial_seconds, self.settings.retry_max_seconds,
                self._rng,
            )  # fmt: skip
            if outcome.retry_after is not None:
                delay = min(max(outcome.retry_after, 0.0), self.settings.retry_max_seconds)
            deadline = record.due_time + self.settings.max_age_seconds
            if now + delay > deadline:
                error = f"gave up after {attempt} attempts (--callback-max-age): {outcome.error}"
                record = replace(record, state="failed", attempts=attempt, last_error=error)
                self.metrics.callback_finished("expired", attempt)
                log.warning("callback not delivered: %s", error, extra={"job_id": record.job_id})
            else:
                record = replace(
                    record, attempts=attempt, last_error=outcome.error,
                    next_attempt_time=now + delay,
                )  # fmt: skip
                log.info(
                    "callback attempt %d failed (%s); next in %.1f s", attempt, outcome.error,
                    delay, extra={"job_id": record.job_id},
                )  # fmt: skip
        record = replace(record, updated=now)
        self._remember(record)
        await self._save(record)

    async def _try(self, record: CallbackRecord, attempt: int) -> Outcome:
        """One attempt; never raises for the receiver's or the network's faults."""
        parts = urlsplit(record.url)
        host = parts.hostname or ""
        if not self.allow.host_allowed(host) or (
            parts.scheme == "http" and not self.allow.allow_http
        ):
            return Outcome(False, "refused", f"{host} is no longer allowed by --callback-allow")
        try:
            body = await self.body_of(record.job_id, attempt, record.last_error)
        except NotFound:
            return Outcome(False, "job_missing", "the job is no longer known")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        literal = parse_address(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                return Outcome(False, error=f"could not resolve {host}: {exc}")
            if not addresses:
                return Outcome(False, error=f"{host} resolved to no address")
        for text in addresses:
            address = parse_address(text)
            if address is None or not self.allow.address_allowed(address):
                return Outcome(
                    False,
                    "refused",
                    f"{host} resolved to {text}, an address --callback-allow does not name",
                )
        return await self._post(record, parts.scheme, host, port, addresses, body)

    async def _post(
        self,
        record: CallbackRecord,
        scheme: str,
        host: str,
        port: int,
        addresses: list[str],
        body: bytes,
    ) -> Outcome:
        assert self._client is not None
        default_port = port == (443 if scheme == "https" else 80)
        headers = {
            "Host": host if default_port else f"{host}:{port}",
            "Content-Type": "application/json",
            signing.SIGNATURE_HEADER: signing.sign(
                body, self.settings.secrets[0], int(self.clock())
            ),
            signing.DELIVERY_HEADER: record.delivery_id,
            signing.JOB_HEADER: record.job_id,
        }
        extensions = {} if parse_address(host) is not None else {"sni_hostname": host}
        error = ""
        for address in addresses:
            url = httpx.URL(record.url).copy_with(host=address, port=port)
            try:
                async with self._client.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as response:
                    # The status is the answer; the body is never read.
                    status = response.status_code
                    retry_after = retry_after_seconds(
                        response.headers.get("Retry-After"), self.clock()
                    )
            except httpx.ConnectError as exc:
                error = f"could not connect to {address}: {exc or type(exc).__name__}"
                continue  # the next address, if any
            except httpx.TimeoutException as exc:
                return Outcome(False, error=f"timed out ({type(exc).__name__})")
            except httpx.HTTPError as exc:
                return Outcome(False, error=f"{type(exc).__name__}: {exc}")
            if 200 <= status < 300:
                return Outcome(True)
            if status == 429 or status >= 500:
                return Outcome(False, error=f"answered {status}", retry_after=retry_after)
            if 300 <= status < 400:
                return Outcome(False, "rejected", f"answered {status} (redirects are not followed)")
            return Outcome(False, "rejected", f"answered {status}")
        return Outcome(False, error=error)

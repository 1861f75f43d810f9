"""Gateway settings from flags and ``COMFYUI_GRPC_*`` environment variables.

A flag beats its variable, which beats the default. Every setting is listed
in :data:`OPTIONS` once, and the README's table is written from the same
names; :func:`describe` prints them at start with secrets masked.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .callbacks.policy import AllowList
from .callbacks.signing import read_secrets
from .redact import redact_database_url, redact_url
from .storage import StorageSettings, add_storage_arguments, storage_settings_from_args

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464
DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = "0.0.0.0"
    """Address the gRPC server binds."""
    port: int = DEFAULT_PORT
    """gRPC port; 0 picks a free one."""
    comfyui_urls: tuple[str, ...] = field(default=(DEFAULT_COMFYUI_URL,), repr=False)
    """ComfyUI base URLs, one per backend (may carry credentials: kept out of repr)."""
    comfyui_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Headers sent to ComfyUI on every request and WebSocket handshake (credentials)."""
    comfyui_token_file: str = ""
    """File with a bearer token for ComfyUI, sent as ``Authorization: Bearer <token>``."""
    comfyui_dns_discovery: bool = False
    """Re-resolve each URL's host name to all its addresses (a headless Service)."""
    dns_refresh_seconds: float = 10.0
    """How often discovered host names are resolved again."""
    backend_lost_after_seconds: float = 15.0
    """A backend unreachable this long loses its jobs: waiting ones move elsewhere
    (or, with no other backend up, wait for it); running ones fail."""
    metrics_host: str = ""
    """Address ``/metrics`` binds; empty: the gRPC ``host``."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Prometheus ``/metrics`` port; -1 turns the endpoint off, 0 picks a free port."""
    insecure: bool = False
    """``serve`` may bind a non-loopback address with no auth and no TLS."""
    reflection: bool = True
    """Serve gRPC reflection (the API's schema, which is public: grpcurl needs no protos)."""
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    """Bearer tokens accepted; none means no authentication."""
    auth_token_file: str = ""
    """File with one token per line, read at start (added to ``auth_tokens``)."""
    tls_cert: str = ""
    """Server certificate chain (PEM); with ``tls_key`` turns TLS on."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """CA bundle for client certificates; set it to require mutual TLS."""
    state_path: str = ""
    """SQLite file for durable job records; empty keeps jobs in memory only."""
    state_url: str = field(default="", repr=False)
    """PostgreSQL URL for durable job records shared by several gateways
    (may carry a password: kept out of repr, shown redacted)."""
    state_url_file: str = ""
    """File holding the PostgreSQL URL, read at start."""
    replica_id: str = ""
    """This gateway's name among replicas sharing a PostgreSQL store
    (default: host name and gRPC port; keep it across restarts)."""
    lease_seconds: float = 10.0
    """How long a replica owns a ComfyUI backend without renewing; another
    replica takes the backend over after that."""
    templates_dir: str = ""
    """Directory of workflow template files (YAML/JSON), re-read on change and SIGHUP."""
    templates_reload_seconds: float = 2.0
    """How often the templates directory is checked for changed files."""
    max_queued_jobs: int = 1000
    """Generate answers RESOURCE_EXHAUSTED beyond this many waiting jobs."""
    max_queued_jobs_per_caller: int = 0
    """Generate answers RESOURCE_EXHAUSTED beyond this many waiting jobs of one caller;
    0 means no per-caller limit."""
    backend_prefetch: int = 1
    """Prompts handed to a backend beyond its running one."""
    max_finished_jobs: int = 10_000
    """Finished jobs kept in memory; older ones are answered from their manifest."""
    max_workflow_nodes: int = 2000
    """Raw workflows with more nodes are refused."""
    max_workflow_bytes: int = 8 * 1024 * 1024
    """Raw workflows larger than this (encoded) are refused before they are converted."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC request message accepted."""
    max_comfyui_answer_bytes: int = 64 * 1024 * 1024
    """Largest JSON answer read from ComfyUI; a larger one is cut off and counted."""
    max_comfyui_message_bytes: int = 64 * 1024 * 1024
    """Largest WebSocket frame accepted from ComfyUI; a larger one closes the socket."""
    max_output_bytes: int = 8 * 1024 * 1024 * 1024
    """Largest output file stored; a job with a larger one fails OUTPUT_TOO_LARGE."""
    reconcile_interval_seconds: float = 2.0
    """How often open jobs are checked against ComfyUI's queue and history."""
    shutdown_grace_seconds: float = 30.0
    """How long open streams and uploads may finish after SIGTERM."""
    callback_allow: tuple[str, ...] = ()
    """Hosts completion callbacks may go to: names, ``*.domain``, networks (CIDR).
    Empty: Generate refuses callbacks."""
    callback_allow_http: bool = False
    """Allow plain-http callback URLs (https otherwise)."""
    callback_secret_file: str = ""
    """File with the callback signing secret(s), one per line; the first signs."""
    callback_max_age_seconds: float = 24 * 3600.0
    """A callback not delivered this long after its job ended is given up on."""
    callback_retry_initial_seconds: float = 1.0
    """First retry delay of a failed callback; it doubles per attempt (with jitter)."""
    log_format: str = "text"
    """``text`` or ``json``."""
    log_level: str = "INFO"
    storage: StorageSettings = field(default_factory=StorageSettings)

    def masked(self) -> dict[str, Any]:
        """Settings for the start-up log, with secrets replaced by ``***``."""
        result: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "storage":
                s3 = value.s3
                result["storage"] = (
                    f"local:{value.local_dir}"
                    if s3 is None
                    else f"s3:{s3.endpoint_url or 'aws'}/{s3.bucket}/{s3.prefix} "
                    f"(credentials {'***' if s3.access_key_id else 'from environment chain'})"
                )
            elif f.name == "auth_tokens":
                result[f.name] = f"{len(value)} token(s) ***" if value else "none"
            elif f.name == "comfyui_urls":
                result[f.name] = tuple(redact_url(url) for url in value)
            elif f.name == "state_url":
                result[f.name] = redact_database_url(value)
            elif f.name == "comfyui_headers":
                result[f.name] = tuple(f"{name}: ***" for name, _ in value)
            else:
                result[f.name] = value
        return result


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    switch: bool = False
    """A boolean flag taking no value (``--name`` / ``--no-name``)."""


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"{url!r} is not an http(s) URL")
    if not urls:
        raise argparse.ArgumentTypeError("at least one ComfyUI URL is needed")
    return urls


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    """``Name: value`` headers, one per line."""
    headers: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.match(name) or not value:
            raise argparse.ArgumentTypeError(f"{name[:40]!r}...: must be 'Name: value'")
        headers.append((name, value))
    if not headers:
        raise argparse.ArgumentTypeError("must be 'Name: value'")
    return tuple(headers)


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError("must be true or false")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def _allow_list(text: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    try:
        AllowList.parse(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def callback_problem(settings: Settings) -> str:
    """Why the callback settings cannot work, or "" (checked before start)."""
    if not settings.callback_allow:
        return ""
    if not settings.callback_secret_file:
        return "--callback-allow needs --callback-secret-file: every callback is signed"
    try:
        read_secrets(settings.callback_secret_file)
    except (OSError, ValueError) as exc:
        return f"--callback-secret-file: {exc}"
    return ""


def _postgres_url(text: str) -> str:
    """A PostgreSQL URL; the error never repeats it (it may hold a password)."""
    url = text.strip()
    if not url.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("must be a postgresql:// URL")
    return url


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise argparse.ArgumentTypeError("must be text or json")
    return text


OPTIONS: tuple[Option, ...] = (
    Option(
        "--host",
        "COMFYUI_GRPC_HOST",
        "host",
        str,
        "address to bind (default 0.0.0.0 for serve, 127.0.0.1 for dev)",
    ),
    Option("--port", "COMFYUI_GRPC_PORT", "port", int, f"gRPC port (default {DEFAULT_PORT})"),
    Option(
        "--comfyui-url",
        "COMFYUI_GRPC_COMFYUI_URLS",
        "comfyui_urls",
        _urls,
        "ComfyUI base URL; repeat or comma-separate for several; user:password@ in it is "
        f"sent, never shown (default {DEFAULT_COMFYUI_URL})",
    ),
    Option(
        "--comfyui-header",
        "COMFYUI_GRPC_COMFYUI_HEADERS",
        "comfyui_headers",
        _headers,
        "header sent to ComfyUI on every request and the WebSocket, 'Name: value'; repeat for "
        "several (the variable: one per line); never logged",
    ),
    Option(
        "--comfyui-token-file",
        "COMFYUI_GRPC_COMFYUI_TOKEN_FILE",
        "comfyui_token_file",
        str,
        "file with a token sent to ComfyUI as 'Authorization: Bearer <token>'",
    ),
    Option(
        "--comfyui-dns-discovery",
        "COMFYUI_GRPC_COMFYUI_DNS_DISCOVERY",
        "comfyui_dns_discovery",
        _flag,
        "re-resolve ComfyUI host names to every address, e.g. a headless Service (default false)",
    ),
    Option(
        "--dns-refresh-interval",
        "COMFYUI_GRPC_DNS_REFRESH_SECONDS",
        "dns_refresh_seconds",
        float,
        "seconds between DNS look-ups with discovery on (default 10)",
    ),
    Option(
        "--backend-lost-after",
        "COMFYUI_GRPC_BACKEND_LOST_AFTER_SECONDS",
        "backend_lost_after_seconds",
        float,
        "seconds a backend may be unreachable before its jobs move or fail; with no "
        "other backend up, waiting jobs wait for it (default 15)",
    ),
    Option(
        "--metrics-host",
        "COMFYUI_GRPC_METRICS_HOST",
        "metrics_host",
        str,
        "address /metrics binds (default: the gRPC --host)",
    ),
    Option(
        "--metrics-port",
        "COMFYUI_GRPC_METRICS_PORT",
        "metrics_port",
        int,
        f"Prometheus /metrics port; -1 disables (default {DEFAULT_METRICS_PORT})",
    ),
    Option(
        "--insecure",
        "COMFYUI_GRPC_INSECURE",
        "insecure",
        _flag,
        "let serve bind a non-loopback address with no auth and no TLS (default false)",
        switch=True,
    ),
    Option(
        "--reflection",
        "COMFYUI_GRPC_REFLECTION",
        "reflection",
        _flag,
        "serve gRPC reflection, the API's public schema (default true)",
        switch=True,
    ),
    Option(
        "--auth-token",
        "COMFYUI_GRPC_AUTH_TOKENS",
        "auth_tokens",
        _tokens,
        "accepted bearer token(s), comma-separated; prefer the file or the variable",
    ),
    Option(
        "--auth-token-file",
        "COMFYUI_GRPC_AUTH_TOKEN_FILE",
        "auth_token_file",
        str,
        "file with accepted bearer tokens, one per line",
    ),
    Option("--tls-cert", "COMFYUI_GRPC_TLS_CERT", "tls_cert", str, "server certificate (PEM)"),
    Option("--tls-key", "COMFYUI_GRPC_TLS_KEY", "tls_key", str, "server private key (PEM)"),
    Option(
        "--tls-client-ca",
        "COMFYUI_GRPC_TLS_CLIENT_CA",
        "tls_client_ca",
        str,
        "CA for client certificates: requires mutual TLS",
    ),
    Option(
        "--state-path",
        "COMFYUI_GRPC_STATE_PATH",
        "state_path",
        str,
        "SQLite file for durable job records (default: in memory only)",
    ),
    Option(
        "--state-url",
        "COMFYUI_GRPC_STATE_URL",
        "state_url",
        _postgres_url,
        "PostgreSQL URL for job records that several gateways share, instead of "
        "--state-path; a password in it is used, never shown (libpq's PGPASSWORD and "
        "~/.pgpass work too)",
    ),
    Option(
        "--state-url-file",
        "COMFYUI_GRPC_STATE_URL_FILE",
        "state_url_file",
        str,
        "file holding the --state-url, e.g. a mounted secret",
    ),
    Option(
        "--replica-id",
        "COMFYUI_GRPC_REPLICA_ID",
        "replica_id",
        str,
        "this gateway's name among replicas sharing --state-url; the same name after a "
        "restart takes its backends back at once (default: host name and --port)",
    ),
    Option(
        "--lease-seconds",
        "COMFYUI_GRPC_LEASE_SECONDS",
        "lease_seconds",
        _seconds,
        "with --state-url: seconds a replica owns a ComfyUI backend without renewing; "
        "another replica takes it over after that (default 10)",
    ),
    Option(
        "--templates-dir",
        "COMFYUI_GRPC_TEMPLATES_DIR",
        "templates_dir",
        str,
        "directory of workflow templates (*.yaml, *.yml, *.json), re-read when files change "
        "and on SIGHUP (default: built-in templates only)",
    ),
    Option(
        "--templates-reload-interval",
        "COMFYUI_GRPC_TEMPLATES_RELOAD_SECONDS",
        "templates_reload_seconds",
        float,
        "seconds between checks of the templates directory for changes (default 2)",
    ),
    Option(
        "--max-queued-jobs",
        "COMFYUI_GRPC_MAX_QUEUED_JOBS",
        "max_queued_jobs",
        int,
        "waiting jobs allowed before Generate answers RESOURCE_EXHAUSTED (default 1000)",
    ),
    Option(
        "--max-queued-jobs-per-caller",
        "COMFYUI_GRPC_MAX_QUEUED_JOBS_PER_CALLER",
        "max_queued_jobs_per_caller",
        int,
        "waiting jobs one caller may have before its Generate answers RESOURCE_EXHAUSTED; "
        "0: no limit (default 0)",
    ),
    Option(
        "--backend-prefetch",
        "COMFYUI_GRPC_BACKEND_PREFETCH",
        "backend_prefetch",
        int,
        "prompts handed to a ComfyUI beyond the one it runs, so its GPU never idles between "
        "jobs; the rest wait in the gateway (default 1)",
    ),
    Option(
        "--max-finished-jobs",
        "COMFYUI_GRPC_MAX_FINISHED_JOBS",
        "max_finished_jobs",
        int,
        "finished jobs kept in memory; older ones are read from their manifest (default 10000)",
    ),
    Option(
        "--max-workflow-nodes",
        "COMFYUI_GRPC_MAX_WORKFLOW_NODES",
        "max_workflow_nodes",
        int,
        "largest raw workflow accepted, in nodes (default 2000)",
    ),
    Option(
        "--max-workflow-bytes",
        "COMFYUI_GRPC_MAX_WORKFLOW_BYTES",
        "max_workflow_bytes",
        int,
        "largest raw workflow accepted, in bytes (default 8 MiB)",
    ),
    Option(
        "--max-message-bytes",
        "COMFYUI_GRPC_MAX_MESSAGE_BYTES",
        "max_message_bytes",
        int,
        "largest gRPC request accepted (default 16 MiB)",
    ),
    Option(
        "--max-comfyui-answer-bytes",
        "COMFYUI_GRPC_MAX_COMFYUI_ANSWER_BYTES",
        "max_comfyui_answer_bytes",
        _positive,
        "largest JSON answer read from ComfyUI; larger ones are cut off (default 64 MiB)",
    ),
    Option(
        "--max-comfyui-message-bytes",
        "COMFYUI_GRPC_MAX_COMFYUI_MESSAGE_BYTES",
        "max_comfyui_message_bytes",
        _positive,
        "largest WebSocket message accepted from ComfyUI; a larger one reopens the "
        "socket (default 64 MiB)",
    ),
    Option(
        "--max-output-bytes",
        "COMFYUI_GRPC_MAX_OUTPUT_BYTES",
        "max_output_bytes",
        _positive,
        "largest output file stored; past it the job fails OUTPUT_TOO_LARGE (default 8 GiB)",
    ),
    Option(
        "--reconcile-interval",
        "COMFYUI_GRPC_RECONCILE_INTERVAL_SECONDS",
        "reconcile_interval_seconds",
        float,
        "seconds between probes of ComfyUI's queue while jobs are open; a full check "
        "every 15th (default 2)",
    ),
    Option(
        "--shutdown-grace",
        "COMFYUI_GRPC_SHUTDOWN_GRACE_SECONDS",
        "shutdown_grace_seconds",
        float,
        "seconds open streams and uploads get after SIGTERM (default 30)",
    ),
    Option(
        "--callback-allow",
        "COMFYUI_GRPC_CALLBACK_ALLOW",
        "callback_allow",
        _allow_list,
        "hosts completion callbacks may be sent to: names, *.domain, networks (CIDR); repeat "
        "or comma-separate; a listed name must resolve to public addresses or listed networks "
        "(default none: Generate refuses callbacks)",
    ),
    Option(
        "--callback-allow-http",
        "COMFYUI_GRPC_CALLBACK_ALLOW_HTTP",
        "callback_allow_http",
        _flag,
        "allow http:// callback URLs, not only https:// (default false)",
        switch=True,
    ),
    Option(
        "--callback-secret-file",
        "COMFYUI_GRPC_CALLBACK_SECRET_FILE",
        "callback_secret_file",
        str,
        "file with the callback signing secret, one per line: the first signs, the others "
        "are older ones kept while receivers rotate; required with --callback-allow",
    ),
    Option(
        "--callback-max-age",
        "COMFYUI_GRPC_CALLBACK_MAX_AGE_SECONDS",
        "callback_max_age_seconds",
        _seconds,
        "seconds after a job ends that its callback is retried before it is given up "
        "(default 86400)",
    ),
    Option(
        "--callback-retry-initial",
        "COMFYUI_GRPC_CALLBACK_RETRY_INITIAL_SECONDS",
        "callback_retry_initial_seconds",
        _seconds,
        "seconds before a failed callback's first retry; doubles per attempt, with jitter, "
        "up to 10 minutes (default 1)",
    ),
    Option(
        "--log-format",
        "COMFYUI_GRPC_LOG_FORMAT",
        "log_format",
        _log_format,
        "text or json (default text)",
    ),
    Option(
        "--log-level",
        "COMFYUI_GRPC_LOG_LEVEL",
        "log_level",
        str.upper,
        "DEBUG, INFO, WARNING or ERROR (default INFO)",
    ),
)


_REPEATED = ("comfyui_urls", "comfyui_headers", "callback_allow")
"""Options whose flag may be given several times, each adding to the list."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.attr, "help": f"{option.help} [{option.env}]"}
        if option.switch or option.parse is _flag:  # a switch: --x / --no-x
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = None
        else:
            kwargs["type"] = option.parse
        if option.attr in _REPEATED:
            kwargs["action"] = "append"
        parser.add_argument(option.flag, **kwargs)
    add_storage_arguments(parser)


def settings_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw_env = env.get(option.env)
        if raw_env:
            try:
                values[option.attr] = option.parse(raw_env)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                shown = "(not shown)" if option.attr == "state_url" else repr(raw_env)
                raise SystemExit(f"comfyui-grpc: {option.env}={shown}: {exc}") from None
        flag_value = getattr(args, option.attr, None)
        if flag_value is not None:
            if option.attr in _REPEATED:
                flag_value = tuple(u for group in flag_value for u in group)
            values[option.attr] = flag_value
    try:
        values["storage"] = storage_settings_from_args(args, env)
    except ValueError as exc:
        raise SystemExit(f"comfyui-grpc: storage settings: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    if problem := state_problem(settings):
        raise SystemExit(f"comfyui-grpc: {problem}")
    return settings


def state_problem(settings: Settings) -> str:
    """Why the job store settings cannot be used together; "" when they can."""
    named = [
        f"{option.flag} ({option.env})"
        for option in OPTIONS
        if option.attr in ("state_path", "state_url", "state_url_file")
        and getattr(settings, option.attr)
    ]
    if len(named) < 2:
        return ""
    return (
        f"{' and '.join(named)} are both set, but jobs are recorded in one place: "
        "keep the one to use"
    )


def describe(settings: Settings) -> Sequence[str]:
    return [f"{key} = {value}" for key, value in settings.masked().items()]

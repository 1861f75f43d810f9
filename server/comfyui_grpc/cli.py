"""Server-side commands: ``serve``, ``dev`` and ``simulator``.

``dev`` is the one-command demo: the ComfyUI simulator, local-directory
storage and the gateway in one process, with the grpcurl lines to try.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from . import __version__, heap, logs
from .app import Gateway, PortUnavailable
from .backends.diagnosis import check_at_start
from .config import Settings, add_arguments, callback_problem, describe, settings_from_args
from .exposure import exposure_problem
from .state import JobStoreUnavailable

log = logging.getLogger("comfyui_grpc")

START_CHECK_SECONDS = 6.0
"""How long ``serve`` waits for each backend's first answer before reporting it
(a little over the socket's 5 s open timeout, so a silent host is reported)."""


@contextlib.contextmanager
def _signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, installed before anything starts so a
    signal during start-up stops the gateway cleanly instead of killing it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(settings: Settings) -> None:
    with _signals() as stop:
        gateway = Gateway(settings)
        loop = asyncio.get_running_loop()
        try:
            await gateway.start()
            # SIGHUP re-reads the templates directory (as a change to its files does).
            loop.add_signal_handler(signal.SIGHUP, gateway.templates.reload)
            await check_at_start(list(gateway.pool), timeout=START_CHECK_SECONDS)
            heap.settle_after_start()
            await stop.wait()
            log.info("shutting down (grace %.0f s)", settings.shutdown_grace_seconds)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await gateway.stop()


def runnable(name: str) -> str:
    """How to type ``name`` so it runs from this shell: the bare name when it is
    on PATH, else its path in this interpreter's bin directory (``make run``
    installs into ``.venv/bin``, which a fresh shell does not have on PATH)."""
    found = shutil.which(name)
    local = Path(sys.executable).parent / name
    if found is not None and Path(found).resolve() == local.resolve():
        return name
    if found is None and local.exists():
        with contextlib.suppress(ValueError):
            return str(local.absolute().relative_to(Path.cwd()))
        return str(local.absolute())
    return name


def _print_banner(settings: Settings, port: int, comfyui: str, metrics_port: int) -> None:
    target = f"localhost:{port}"
    grpcurl = runnable("grpcurl")
    cli = runnable("comfyui-grpc")
    client_target = "" if port == 50051 else f" --target {target}"
    metrics = f"http://localhost:{metrics_port}/metrics" if metrics_port else "off"
    print(
        f"""
comfyui-grpc {__version__} (dev) is ready.
  gRPC       {target}   (reflection {"on: no proto files needed" if settings.reflection else "off"})
  ComfyUI    {comfyui}   (simulator)
  artifacts  {settings.storage.local_dir if settings.storage.s3 is None else "s3"}
  metrics    {metrics}

Try it:
  {cli} generate "a lighthouse at dusk" --size 512x512 --out out/{client_target}
  {cli} jobs{client_target}
  {grpcurl} -plaintext {target} list
  {grpcurl} -plaintext \\
      -d '{{"text_to_image": {{"prompt": "a lighthouse at dusk", "width": 512, "height": 512}}}}' \\
      {target} comfyui_grpc.v1.GenerationService/Generate
  {grpcurl} -plaintext -d '{{"job_id": "JOB_ID", "after_sequence": 0}}' \\
      {target} comfyui_grpc.v1.GenerationService/StreamProgress
  {grpcurl} -plaintext -d '{{"job_id": "JOB_ID", "wait_timeout": "60s"}}' \\
      {target} comfyui_grpc.v1.GenerationService/GetResult

Ctrl-C stops everything.""",
        flush=True,
    )


async def _dev(args: argparse.Namespace, settings: Settings) -> None:
    with _signals() as stop:
        await _dev_until(args, settings, stop)


async def _dev_until(args: argparse.Namespace, settings: Settings, stop: asyncio.Event) -> None:
    from .simulator import Simulator

    simulator = Simulator(output_dir=args.simulator_dir, step_seconds=args.step_seconds)
    try:
        await simulator.start(host="127.0.0.1", port=args.simulator_port)
    except OSError as exc:
        why = "is already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        port = args.simulator_port
        raise PortUnavailable("simulator", "--simulator-port", "127.0.0.1", port, why) from None
    try:
        gateway = Gateway(dataclasses.replace(settings, comfyui_urls=(simulator.url,)))
        await gateway.start()
        try:
            await gateway.wait_backends(5.0)
            heap.settle_after_start()
            metrics_port = gateway.metrics_server.port if gateway.metrics_server else 0
            _print_banner(settings, gateway.port, simulator.url, metrics_port)
            await stop.wait()
        finally:
            await gateway.stop(grace=min(settings.shutdown_grace_seconds, 5.0))
    finally:
        await simulator.stop()


DEV_STATE_PATH = "var/state.db"


def dev_defaults(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """What ``dev`` does unless told otherwise: loopback only (a demo is never
    reachable from elsewhere unless asked), job records in SQLite under var/."""
    if args.host is None and not environ.get("COMFYUI_GRPC_HOST"):
        args.host = "127.0.0.1"
    state = ("state_path", "state_url", "state_url_file")
    given = any(getattr(args, name, None) for name in state) or any(
        environ.get(f"COMFYUI_GRPC_{name.upper()}") for name in state
    )
    if not given:
        args.state_path = DEV_STATE_PATH


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyui-grpc", description="gRPC gateway for ComfyUI")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway against real ComfyUI servers")
    add_arguments(serve)
    dev = commands.add_parser(
        "dev", help="run the gateway with the ComfyUI simulator and local storage (a demo)"
    )
    add_arguments(dev)
    dev.add_argument(
        "--simulator-port", type=int, default=8188, help="simulator port (default 8188)"
    )
    dev.add_argument(
        "--simulator-dir",
        type=Path,
        default=Path("var/simulator"),
        help="simulator's ComfyUI directories (default var/simulator)",
    )
    dev.add_argument(
        "--step-seconds",
        type=float,
        default=0.2,
        help="simulated seconds per sampler step (default 0.2)",
    )
    commands.add_parser(
        "simulator", help="run the ComfyUI simulator alone (see `simulator --help`)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulator":
        from .simulator.cli import main as simulator_main

        code: int = simulator_main(argv[1:])
        return code
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dev":
        dev_defaults(args, os.environ)
    settings = settings_from_args(args)
    if args.command == "serve" and (problem := exposure_problem(settings)):
        print(f"comfyui-grpc serve: error: {problem}", file=sys.stderr)
        return 2
    if problem := callback_problem(settings):
        print(f"comfyui-grpc {args.command}: error: {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    for line in describe(settings):
        log.info("setting %s", line)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            if args.command == "serve":
                asyncio.run(_serve(settings))
            else:
                asyncio.run(_dev(args, settings))
    except PortUnavailable as exc:
        print(f"comfyui-grpc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except JobStoreUnavailable as exc:  # the database is down or refused us at start
        print(f"comfyui-grpc {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    return 0

"""The ``comfyui-grpc`` command.

Client commands (``generate``, ``jobs``, ``watch``, ``cancel``, ``result``,
``upload``, ``templates``, ``models``) run on the SDK's blocking
:class:`~.sync.Client`. Server
commands (``serve``, ``dev``, ``simulator``) need the ``server`` extra and
are handed to :mod:`comfyui_grpc.cli`.

Errors are one line on stderr, never a traceback. Exit codes: 0 success,
1 a call failed, 2 bad usage, 3 the job failed or was cancelled,
130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format

from .cli_progress import ProgressDisplay
from .client import DEFAULT_TIMEOUT, new_request_id, raise_for_job
from .credentials import (
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    DEFAULT_TARGET,
    TARGET_ENV,
    TLS_ENV,
    TOKEN_ENV,
    TLSConfig,
)
from .errors import GenerationError, JobCancelledError, JobFailedError, UnavailableError
from .models import Artifact, Job, JobState, ParameterType, Priority, Template, VideoFormat
from .preview_files import PreviewFiles
from .progress import EventKind, ProgressUpdate
from .requests import image_request, template_request, video_request
from .sync import Client

SERVER_COMMANDS = frozenset({"serve", "dev", "simulator"})

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_JOB, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = (
    "Exit codes: 0 ok, 1 call failed (or the gateway went away), 2 usage, "
    "3 job failed/cancelled, 130 interrupted."
)

VIDEO_FORMATS = {"mp4": VideoFormat.H264_MP4, "gif": VideoFormat.GIF, "webp": VideoFormat.WEBP}


class Console:
    """stdout for results, stderr for progress and messages: scripts can pipe
    stdout while people still see what is going on."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def json(self, value: Any) -> None:
        self.print(json.dumps(value, indent=2, sort_keys=False))

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()


# -- argument parsing ------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT, both positive: the API reads 0 as "the default", so a 0
    here would silently become 1024 (or 512 for video)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x1024") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: width and height must be positive, e.g. 1024x1024"
        )
    return width, height


def _positive(text: str) -> int:
    """A whole number above 0 (0 would mean "the default" to the API)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _above_zero(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _param(text: str) -> tuple[str, Any]:
    """NAME=VALUE for a template parameter. VALUE is JSON when it parses as
    JSON (``30``, ``0.5``, ``true``, ``"quoted text"``), else the text itself;
    ``@path`` is a file sent inline (an image)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. steps=30")
    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.is_file():
            raise argparse.ArgumentTypeError(
                f"{key}: {raw[1:]!r} is not a readable file (write a text starting with @ "
                f"as a JSON string: {key}='\"{raw}\"')"
            )
        return key, path
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _state(text: str) -> JobState:
    try:
        return JobState[text.upper()]
    except KeyError:
        names = ", ".join(s.name.lower() for s in JobState if s is not JobState.UNSPECIFIED)
        raise argparse.ArgumentTypeError(f"{text!r} is not a job state ({names})") from None


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Connection flags, accepted before or after the command name."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(None),
        help=f"gateway HOST:PORT [{TARGET_ENV}, default {DEFAULT_TARGET}]",
    )
    group.add_argument(
        "--token", default=default(None), help=f"bearer token for every call [{TOKEN_ENV}]"
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help=f"use TLS with the system's root certificates [{TLS_ENV}=1]",
    )
    group.add_argument(
        "--ca-cert",
        type=Path,
        default=default(None),
        help=f"PEM root certificate(s) to trust; implies --tls [{CA_CERT_ENV}]",
    )
    group.add_argument(
        "--client-cert",
        type=Path,
        default=default(None),
        help=f"PEM client certificate for mutual TLS [{CLIENT_CERT_ENV}]",
    )
    group.add_argument(
        "--client-key",
        type=Path,
        default=default(None),
        help=f"PEM key of --client-cert [{CLIENT_KEY_ENV}]",
    )
    group.add_argument(
        "--server-name",
        default=default(None),
        help="name in the server certificate, when it differs from the target host",
    )
    group.add_argument(
        "--timeout",
        type=_above_zero,
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds allowed for each call, retries included (default {DEFAULT_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-grpc",
        description="Generate images and videos through a comfyui-grpc gateway.",
        epilog=EXIT_CODES,
    )
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    client_commands: list[argparse.ArgumentParser] = []

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES)
        client_commands.append(sub)
        return sub

    gen = command(
        "generate",
        "generate an image (or --video, or from a --template), show progress, save the outputs",
    )
    gen.add_argument(
        "prompt", nargs="?", default=None, help="what to draw (with --template: its prompt)"
    )
    gen.add_argument(
        "--template",
        metavar="NAME",
        default=None,
        help="run this workflow template (`comfyui-grpc templates` lists them) with -p values",
    )
    gen.add_argument(
        "--template-version",
        metavar="N",
        type=_non_negative,
        default=0,
        help="the template's version (default: the newest)",
    )
    gen.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template parameter; repeatable. VALUE is JSON when it parses (30, 0.5, true), "
        "else text; @FILE sends a file inline (an image, at most 8 MiB)",
    )
    gen.add_argument("--negative", default="", help="what to avoid")
    gen.add_argument("--video", action="store_true", help="make an AnimateDiff video")
    gen.add_argument("--frames", type=_positive, default=0, help="video frames (default 16)")
    gen.add_argument(
        "--fps", type=_above_zero, default=None, help="video frames per second (default 8)"
    )
    gen.add_argument(
        "--format", choices=sorted(VIDEO_FORMATS), default=None, help="video format (default mp4)"
    )
    gen.add_argument(
        "--size",
        type=_size,
        default=None,
        help="WIDTHxHEIGHT (default 1024x1024, video 512x512)",
    )
    gen.add_argument("--steps", type=_positive, default=0, help="sampling steps (default 20)")
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale (default 7)")
    gen.add_argument("--seed", type=_non_negative, default=None, help="noise seed (default random)")
    gen.add_argument("--sampler", default="", help="KSampler sampler name")
    gen.add_argument("--scheduler", default="", help="KSampler scheduler")
    gen.add_argument("--checkpoint", default="", help="checkpoint file name")
    gen.add_argument("--batch", type=_positive, default=0, help="images per job (default 1)")
    gen.add_argument(
        "--label", type=_label, action="append", default=[], help="KEY=VALUE label; repeatable"
    )
    gen.add_argument(
        "--priority",
        choices=["normal", "high"],
        default=None,
        help="high runs before waiting normal jobs (default normal)",
    )
    gen.add_argument(
        "--request-id", default=None, help="idempotency key; re-running with it resumes the job"
    )
    gen.add_argument("--out", type=Path, default=Path("."), help="directory for outputs")
    gen.add_argument("--no-download", action="store_true", help="print keys, save nothing")
    gen.add_argument(
        "--preview-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the newest live preview of each node here (JOBID8-preview-NODE.jpg, "
        "replaced as the image forms; ComfyUI needs a preview method)",
    )
    gen.add_argument(
        "--presigned", action="store_true", help="download through presigned URLs when available"
    )
    gen.add_argument(
        "--on-interrupt",
        choices=["ask", "cancel", "keep"],
        default="ask",
        help="what Ctrl-C does to the job (default: ask on a terminal, else keep)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress display")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    gen.set_defaults(handler=cmd_generate)

    jobs = command("jobs", "list jobs: running, waiting, then recently finished")
    jobs.add_argument(
        "--state", type=_state, action="append", default=[], help="only this state; repeatable"
    )
    jobs.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument(
        "--ids",
        action="store_true",
        help="print only the job ids, one per line, in the table's order (for scripts: "
        "JOB_ID=$(comfyui-grpc jobs --ids --limit 1))",
    )
    jobs.set_defaults(handler=cmd_jobs)

    watch = command("watch", "follow a job's progress until it ends")
    watch.add_argument("job_id")
    watch.add_argument(
        "--after",
        type=_non_negative,
        default=None,
        help="replay events after this sequence (0: all)",
    )
    watch.add_argument(
        "--reconnect-for",
        type=_seconds,
        default=120.0,
        help="seconds to keep reconnecting when the gateway goes away (default 120)",
    )
    watch.add_argument("--json", action="store_true", help="print each event as a JSON line")
    watch.set_defaults(handler=cmd_watch)

    cancel = command("cancel", "cancel a job")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true", help="print the job as JSON")
    cancel.set_defaults(handler=cmd_cancel)

    result = command("result", "show a job's outputs (optionally wait, save)")
    result.add_argument("job_id")
    result.add_argument(
        "--wait", type=_seconds, default=0.0, help="seconds to wait for the job to end"
    )
    result.add_argument(
        "--presign", type=_seconds, default=None, help="add presigned URLs valid this many seconds"
    )
    result.add_argument("--out", type=Path, default=None, help="save the outputs here")
    result.add_argument("--json", action="store_true", help="print the job as JSON")
    result.set_defaults(handler=cmd_result)

    upload = command("upload", "upload an input image for image-to-image workflows")
    upload.add_argument("path", type=Path)
    upload.add_argument("--name", default=None, help="file name to store (default: the path's)")
    upload.add_argument(
        "--subfolder", default="", help="ComfyUI input subfolder to store it in (default: none)"
    )
    upload.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a file of the same name (default: ComfyUI picks a new name)",
    )
    upload.add_argument("--json", action="store_true", help="print JSON")
    upload.set_defaults(handler=cmd_upload)

    templates = command("templates", "list the workflow templates the gateway serves")
    templates.add_argument(
        "--all-versions", action="store_true", help="every loaded version, not only the newest"
    )
    templates.add_argument("--json", action="store_true", help="print JSON")
    templates.set_defaults(handler=cmd_templates)
    show_commands = templates.add_subparsers(dest="templates_command", metavar="SUBCOMMAND")
    show_text = "show one template and its parameters"
    show = show_commands.add_parser(
        "show", help=show_text, description=show_text, epilog=EXIT_CODES
    )
    client_commands.append(show)
    show.add_argument("name", help="the template's name")
    show.add_argument(
        "--version", type=_non_negative, default=0, help="which version (default: the newest)"
    )
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    show.set_defaults(handler=cmd_template_show)

    models = command("models", "list the model files the ComfyUI backends hold")
    models.add_argument(
        "--folder", default="", help="only this folder, e.g. loras (default: every folder)"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=cmd_models)

    for sub in client_commands:
        _connection_options(sub, suppress=True)
    for name, text in (
        ("serve", "run the gateway (server extra)"),
        ("dev", "run gateway + ComfyUI simulator + local storage (server extra)"),
        ("simulator", "run the ComfyUI simulator (server extra)"),
    ):
        commands.add_parser(name, help=text, add_help=False)
    return parser


def make_client(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Client:
    """A client from flags, falling back to the ``COMFYUI_GRPC_*`` variables."""
    env = dict(os.environ if environ is None else environ)
    target = args.target or env.get(TARGET_ENV) or DEFAULT_TARGET
    token = args.token or env.get(TOKEN_ENV) or None
    ca = args.ca_cert or (Path(env[CA_CERT_ENV]) if env.get(CA_CERT_ENV) else None)
    cert = args.client_cert or (Path(env[CLIENT_CERT_ENV]) if env.get(CLIENT_CERT_ENV) else None)
    key = args.client_key or (Path(env[CLIENT_KEY_ENV]) if env.get(CLIENT_KEY_ENV) else None)
    use_tls = (
        args.tls
        or env.get(TLS_ENV, "").lower() in ("1", "true", "yes")
        or ca is not None
        or cert is not None
    )
    tls = TLSConfig.from_files(ca, cert, key, args.server_name) if use_tls else False
    return Client(target, tls=tls, token=token, timeout=args.timeout)


# -- output helpers ----------------------------------------------------------------


def job_dict(job: Job) -> dict[str, Any]:
    """The job in the proto's JSON mapping (field names as in the .proto)."""
    if job.raw is None:
        return {"job_id": job.job_id, "state": job.state.name}
    return json_format.MessageToDict(job.raw, preserving_proto_field_name=True)


def _artifact_dict(artifact: Artifact, path: Path | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "key": artifact.key,
        "uri": artifact.uri,
        "filename": artifact.filename,
        "content_type": artifact.content_type,
        "size_bytes": artifact.size_bytes,
        "sha256": artifact.sha256,
    }
    if artifact.presigned_url:
        item["presigned_url"] = artifact.presigned_url
    if path is not None:
        item["path"] = str(path)
    return item


def _save(
    client: Client, artifacts: Sequence[Artifact], out: Path, presigned: bool
) -> list[tuple[Artifact, Path]]:
    out.mkdir(parents=True, exist_ok=True)
    fetch = client.download_url if presigned else client.download
    return [(artifact, fetch(artifact, out)) for artifact in artifacts]


def _print_artifacts(
    console: Console, saved: Sequence[tuple[Artifact, Path | None]], job: Job
) -> None:
    for artifact, path in saved:
        where = str(path) if path is not None else artifact.uri
        console.print(
            f"{where}  key={artifact.key}  {artifact.content_type}  {artifact.size_bytes} bytes"
        )
        if artifact.presigned_url:
            console.print(f"  url: {artifact.presigned_url}")
    if not saved:
        console.print(f"job {job.job_id} has no outputs")


# -- commands ----------------------------------------------------------------------


# Options of the built-in text-to-image/video request, which a template replaces with -p.
BUILT_IN_ONLY = (
    ("negative", "--negative", ""),
    ("video", "--video", False),
    ("frames", "--frames", 0),
    ("fps", "--fps", None),
    ("format", "--format", None),
    ("size", "--size", None),
    ("steps", "--steps", 0),
    ("cfg", "--cfg", None),
    ("seed", "--seed", None),
    ("sampler", "--sampler", ""),
    ("scheduler", "--scheduler", ""),
    ("checkpoint", "--checkpoint", ""),
    ("batch", "--batch", 0),
)


class UsageError(Exception):
    """A mistake in the command line found after parsing: exit 2."""


def _template_request(args: argparse.Namespace) -> Any:
    clashes = [flag for attr, flag, unset in BUILT_IN_ONLY if getattr(args, attr) != unset]
    if clashes:
        raise UsageError(
            f"{', '.join(clashes)} cannot be used with --template: set the template's "
            f"parameters with -p NAME=VALUE (`comfyui-grpc templates show {args.template}` "
            "lists them)"
        )
    params: dict[str, Any] = {}
    for key, value in args.param:
        if key in params:
            raise UsageError(f"-p {key} is given twice")
        params[key] = value
    if args.prompt is not None:
        if "prompt" in params:
            raise UsageError("the prompt is given twice: as PROMPT and as -p prompt=...")
        params["prompt"] = args.prompt
    try:
        return template_request(args.template, args.template_version, params)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _request(args: argparse.Namespace) -> Any:
    if args.template is not None:
        return _template_request(args)
    if args.param or args.template_version:
        raise UsageError("-p and --template-version need --template NAME")
    if args.prompt is None:
        raise UsageError("what should it draw? give a PROMPT (or --template NAME with -p values)")
    width, height = args.size or (0, 0)
    if args.video:
        return video_request(
            args.prompt,
            negative_prompt=args.negative,
            frames=args.frames,
            fps=args.fps,
            width=width,
            height=height,
            steps=args.steps,
            cfg=args.cfg,
            seed=args.seed,
            format=VIDEO_FORMATS[args.format] if args.format else None,
            checkpoint=args.checkpoint,
            sampler=args.sampler,
            scheduler=args.scheduler,
        )
    return image_request(
        args.prompt,
        negative_prompt=args.negative,
        width=width,
        height=height,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        sampler=args.sampler,
        scheduler=args.scheduler,
        checkpoint=args.checkpoint,
        batch_size=args.batch,
    )


def _ask(console: Console, question: str) -> bool:
    console.err.write(question)
    console.err.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        console.err.write("\n")
        return False
    return answer.strip().lower() in ("y", "yes")


def _interrupted(client: Client, console: Console, job_id: str, policy: str) -> int:
    """Ctrl-C while following a job: cancel it, keep it, or ask."""
    if policy == "ask":
        if sys.stdin.isatty():
            policy = "cancel" if _ask(console, f"Cancel job {job_id}? [y/N] ") else "keep"
        else:
            policy = "keep"
    if policy == "cancel":
        job = client.cancel(job_id)
        state = job.state.name.lower()
        if job.state is not JobState.CANCELLED and job.cancel_requested:
            state += " (cancel requested)"
        console.note(f"job {job_id}: {state}")
    else:
        console.note(
            f"job {job_id} keeps running: `comfyui-grpc watch {job_id}` follows it, "
            f"`comfyui-grpc cancel {job_id}` stops it"
        )
    return EXIT_INTERRUPTED


def cmd_generate(client: Client, args: argparse.Namespace, console: Console) -> int:
    try:
        request = _request(args)
    except UsageError as exc:
        console.note(f"comfyui-grpc generate: error: {exc}")
        return EXIT_USAGE
    request_id = args.request_id or new_request_id()
    display = None if args.quiet else ProgressDisplay(console.err, show_snapshot=False)
    started = time.monotonic()
    try:
        submission = client.submit(
            request,
            request_id=request_id,
            labels=dict(args.label),
            priority=Priority[args.priority.upper()] if args.priority else None,
        )
    except KeyboardInterrupt:
        console.note(
            f"\ninterrupted while submitting; if the job was created, "
            f"`comfyui-grpc generate ... --request-id {request_id}` picks it up"
        )
        return EXIT_INTERRUPTED
    job_id = submission.job_id
    if display is not None:
        note = " (existing job for this request id)" if submission.deduplicated else ""
        display.message(f"job {job_id}{note}")
    previews = PreviewFiles(args.preview_dir, job_id) if args.preview_dir else None
    try:
        for update in client.watch(job_id, after_sequence=0, include_previews=previews is not None):
            if update.preview is not None:
                if previews is not None:
                    path = previews.write(update.preview)
                    if display is not None:
                        display.previewed(
                            f"preview {update.preview.value}/{update.preview.max} -> {path}"
                        )
                continue
            if display is not None:
                display.update(update)
        job = client.wait(job_id, presign_ttl=3600 if args.presigned else None)
    except KeyboardInterrupt:
        if display is not None:
            display.clear()
        else:
            console.err.write("\n")
        return _interrupted(client, console, job_id, args.on_interrupt)
    if display is not None:
        display.clear()
    raise_for_job(job)
    saved: list[tuple[Artifact, Path | None]] = []
    if args.no_download:
        saved = [(a, None) for a in job.artifacts]
    else:
        saved = list(_save(client, job.artifacts, args.out, args.presigned))
    if args.json:
        console.json(
            {
                "job": job_dict(job),
                "request_id": submission.request_id,
                "files": [_artifact_dict(a, p) for a, p in saved],
            }
        )
    else:
        elapsed = time.monotonic() - started
        console.note(f"job {job_id} succeeded in {elapsed:.1f} s")
        _print_artifacts(console, saved, job)
    return EXIT_OK


def cmd_jobs(client: Client, args: argparse.Namespace, console: Console) -> int:
    jobs = list(client.iter_jobs(args.state, limit=args.limit))
    if args.ids:
        for job in jobs:
            console.print(job.job_id)
        return EXIT_OK
    if args.json:
        console.json([job_dict(j) for j in jobs])
        return EXIT_OK
    if not jobs:
        console.note("no jobs")
        return EXIT_OK
    console.print(f"{'JOB ID':<36}  {'STATE':<10} {'DONE':>5}  {'KIND':<13} CREATED")
    for job in jobs:
        created = (
            job.create_time.astimezone().strftime("%Y-%m-%d %H:%M:%S") if job.create_time else ""
        )
        console.print(
            f"{job.job_id:<36}  {job.state.name.lower():<10} "
            f"{round(job.progress.fraction * 100):>4}%  {job.kind.name.lower():<13} {created}"
        )
    return EXIT_OK


def _update_dict(update: ProgressUpdate) -> dict[str, Any]:
    if update.raw is not None:
        item = json_format.MessageToDict(update.raw, preserving_proto_field_name=True)
    else:
        item = {"job_id": update.job_id, "sequence": update.sequence}
    item["fraction"] = update.fraction
    return item


def cmd_watch(client: Client, args: argparse.Namespace, console: Console) -> int:
    """Follow a job; when the gateway goes away (restart, rolling update), say
    so once and keep reopening the stream after the last event seen for up to
    ``--reconnect-for`` seconds, so nothing is missed or shown twice."""
    display = ProgressDisplay(console.err, show_snapshot=args.after is None)
    last: ProgressUpdate | None = None
    away_since: float | None = None
    attempt = 0
    try:
        while True:
            after = args.after if last is None else last.sequence
            try:
                resumed = last is not None
                for update in client.watch(args.job_id, after_sequence=after):
                    if away_since is not None:
                        console.note(f"reconnected; following job {args.job_id} again")
                        away_since, attempt = None, 0
                    if resumed and last is not None:
                        if update.kind is EventKind.SNAPSHOT:
                            continue  # resumed: what changed meanwhile follows as events
                        # A job's fraction never goes back; a resumed stream
                        # starts counting afresh, so carry the last one forward.
                        update = dataclasses.replace(
                            update, fraction=max(update.fraction, last.fraction)
                        )
                    last = update
                    if args.json:
                        console.print(json.dumps(_update_dict(update)))
                    else:
                        display.update(update)
                break
            except UnavailableError as exc:
                now = time.monotonic()
                if away_since is None:
                    away_since = now
                    display.clear()
                    console.note(
                        f"lost the gateway ({exc.one_line()}); reconnecting for up to "
                        f"{args.reconnect_for:g} s (Ctrl-C stops watching)"
                    )
                if now - away_since >= args.reconnect_for:
                    raise
                attempt += 1
                time.sleep(min(5.0, 0.25 * 2 ** min(attempt, 5)))
    except KeyboardInterrupt:
        display.clear()
        console.note(f"stopped watching; job {args.job_id} keeps running")
        return EXIT_INTERRUPTED
    display.clear()
    if last is None:
        return EXIT_ERROR
    if not args.json:
        console.print(f"job {args.job_id}: {last.state.name.lower()}")
    return EXIT_OK if last.state is JobState.SUCCEEDED else EXIT_JOB


def cmd_cancel(client: Client, args: argparse.Namespace, console: Console) -> int:
    job = client.cancel(args.job_id)
    if args.json:
        console.json(job_dict(job))
    else:
        extra = " (cancel requested)" if job.cancel_requested and not job.terminal else ""
        console.print(f"job {job.job_id}: {job.state.name.lower()}{extra}")
    return EXIT_OK


def cmd_result(client: Client, args: argparse.Namespace, console: Console) -> int:
    job = client.get_result(
        args.job_id,
        wait=args.wait or None,
        presign_ttl=args.presign,
        timeout=(args.wait or 0.0) + args.timeout,
    )
    saved: list[tuple[Artifact, Path | None]] = [(a, None) for a in job.artifacts]
    if args.out is not None and job.artifacts:
        saved = list(_save(client, job.artifacts, args.out, bool(args.presign)))
    if args.json:
        item = job_dict(job)
        if args.out is not None:
            item["files"] = [_artifact_dict(a, p) for a, p in saved]
        console.json(item)
    else:
        console.print(f"job {job.job_id}: {job.state.name.lower()}")
        if job.error is not None:
            console.print(f"error: {job.error.reason}: {job.error.message}")
        if job.terminal:
            _print_artifacts(console, saved, job)
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        return EXIT_JOB
    return EXIT_OK


def cmd_upload(client: Client, args: argparse.Namespace, console: Console) -> int:
    uploaded = client.upload_input(
        args.path, filename=args.name, subfolder=args.subfolder, overwrite=args.overwrite
    )
    if args.json:
        console.json(
            {
                "image": uploaded.image,
                "name": uploaded.name,
                "subfolder": uploaded.subfolder,
                "backends": list(uploaded.backends),
                "size_bytes": uploaded.size_bytes,
            }
        )
    else:
        console.print(f"uploaded {uploaded.size_bytes} bytes as {uploaded.image}")
    return EXIT_OK


def _rows(console: Console, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: columns padded to their widest cell, the last one not."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        console.print("  ".join([*cells, row[-1]]).rstrip())


def _message_dict(message: Any) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return value


def _template_dict(template: Template) -> dict[str, Any]:
    if template.raw is None:
        return {"name": template.name, "version": template.version}
    return _message_dict(template.raw)


def cmd_templates(client: Client, args: argparse.Namespace, console: Console) -> int:
    templates = client.list_templates(all_versions=args.all_versions)
    if args.json:
        console.json([_template_dict(t) for t in templates])
        return EXIT_OK
    if not templates:
        console.note("no templates")
        return EXIT_OK
    rows = [
        [
            t.name,
            str(t.version),
            "yes" if t.runnable else "no",
            "built-in" if t.built_in else "file",
            t.description
            if t.runnable
            else f"{t.description} (not runnable: {t.unrunnable_reason})",
        ]
        for t in templates
    ]
    _rows(console, ["NAME", "VERSION", "RUNNABLE", "SOURCE", "DESCRIPTION"], rows)
    return EXIT_OK


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _bounds(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return ""
    return f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}"


def cmd_template_show(client: Client, args: argparse.Namespace, console: Console) -> int:
    template = client.get_template(args.name, args.version)
    if getattr(args, "json", False):
        console.json(_template_dict(template))
        return EXIT_OK
    source = "built-in" if template.built_in else "file"
    state = "runnable" if template.runnable else f"not runnable: {template.unrunnable_reason}"
    console.print(f"{template.name} version {template.version} ({source}, {state})")
    if template.description:
        console.print(template.description)
    if template.outputs:
        console.print(f"outputs: nodes {', '.join(template.outputs)}")
    console.print()
    rows = []
    for param in template.parameters:
        kind = param.type.name.lower()
        if param.type is ParameterType.MODEL and param.folder:
            kind += f" ({param.folder})"
        if param.required:
            default = "(required)"
        elif param.has_default:
            default = _shown(param.default)
        else:
            default = "(random)" if param.type is ParameterType.SEED else ""
        allowed = ", ".join(param.values) or _bounds(param.min, param.max)
        rows.append([param.name, kind, default, param.description, allowed])
    _rows(console, ["PARAMETER", "TYPE", "DEFAULT", "DESCRIPTION", "ALLOWED"], rows)
    return EXIT_OK


def cmd_models(client: Client, args: argparse.Namespace, console: Console) -> int:
    folders = client.list_models(args.folder)
    if args.json:
        console.json(
            [
                {
                    "name": f.name,
                    "files": [{"name": m.name, "backends": list(m.backends)} for m in f.files],
                }
                for f in folders
            ]
        )
        return EXIT_OK
    rows = [[f.name, m.name, ", ".join(m.backends)] for f in folders for m in f.files]
    if not rows:
        where = f" in {args.folder}" if args.folder else ""
        console.note(f"no model files{where} on the connected backends")
        return EXIT_OK
    _rows(console, ["FOLDER", "FILE", "BACKENDS"], rows)
    return EXIT_OK


Handler = Callable[[Client, argparse.Namespace, Console], int]


def _server_main(args: list[str]) -> int:
    try:
        from comfyui_grpc.cli import main as server_main
    except ImportError as exc:
        print(
            f"comfyui-grpc {args[0]}: the server is not installed ({exc.name} is missing); "
            "install with: pip install 'comfyui-grpc[server]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return server_main(args)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SERVER_COMMANDS:
        return _server_main(args)
    console = console or Console()
    parser = build_parser()
    namespace = parser.parse_args(args)
    handler: Handler | None = getattr(namespace, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        client = make_client(namespace)
    except (OSError, ValueError) as exc:
        console.note(f"comfyui-grpc: error: {exc}")
        return EXIT_USAGE
    try:
        with client:
            return handler(client, namespace, console)
    except (JobFailedError, JobCancelledError) as exc:
        console.note(f"comfyui-grpc: {exc.one_line()}")
        return EXIT_JOB
    except UnavailableError as exc:
        if exc.domain:  # the gateway answered: ComfyUI or the store is down
            console.note(f"comfyui-grpc: error: {exc.one_line()}")
        else:  # the transport failed: the gateway itself is gone or not there
            console.note(
                f"comfyui-grpc: error: cannot reach the gateway at {client.config.target} "
                f"(stopped, restarting or not started?): {exc.one_line()}"
            )
        return EXIT_ERROR
    except GenerationError as exc:
        console.note(f"comfyui-grpc: error: {exc.one_line()}")
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`comfyui-grpc jobs | head`): not an error. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except OSError as exc:
        console.note(f"comfyui-grpc: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        console.note("\ninterrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())

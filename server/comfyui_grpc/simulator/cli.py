"""Command line for ``comfyui-grpc simulator`` and ``python -m comfyui_grpc.simulator``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from .faults import Faults
from .server import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_LORAS,
    DEFAULT_MOTION_MODULES,
    PREVIEW_METHODS,
    Simulator,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-grpc simulator",
        description="Run a simulated ComfyUI (HTTP + WebSocket) with optional fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8188, help="port (0 picks a free one)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="output folder (default: temporary)"
    )
    parser.add_argument(
        "--input-dir", type=Path, default=None, help="input folder (default: temporary)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.02,
        help="duration of one sampler step / video frame",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiplier for durations given in a prompt (TestSlowProgress seconds_per_step)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        dest="checkpoints",
        metavar="NAME",
        help=f"simulated checkpoint file (repeatable; default: {', '.join(DEFAULT_CHECKPOINTS)})",
    )
    parser.add_argument(
        "--motion-module",
        action="append",
        dest="motion_modules",
        metavar="NAME",
        help=f"simulated motion module (repeatable; default: {DEFAULT_MOTION_MODULES[0]})",
    )
    parser.add_argument(
        "--lora",
        action="append",
        dest="loras",
        metavar="NAME",
        help=f"simulated LoRA file (repeatable; default: {', '.join(DEFAULT_LORAS)})",
    )
    parser.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default="none",
        help="like ComfyUI's: anything but none (the default) makes KSampler send a preview "
        "image per step (TestSlowProgress send_preview sends them regardless)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--http-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay every HTTP request",
    )
    faults.add_argument(
        "--http-500",
        action="append",
        default=[],
        metavar="PATH",
        help="answer this path (e.g. /prompt; /api prefix implied) with HTTP 500 (repeatable)",
    )
    faults.add_argument(
        "--ws-drop-after",
        type=int,
        default=None,
        metavar="N",
        help="abort each WebSocket after N messages",
    )
    faults.add_argument(
        "--fail-node", default=None, metavar="CLASS", help="nodes of this class fail at run time"
    )
    hostile = parser.add_argument_group("hostile ComfyUI")
    hostile.add_argument(
        "--ws-malformed",
        action="append",
        default=[],
        metavar="TYPE",
        help="send WebSocket messages of this type (e.g. status, execution_cached; not_json "
        "for garbage text; preview for binary preview frames) with data of the wrong shape "
        "(repeatable)",
    )
    hostile.add_argument(
        "--http-malformed",
        action="append",
        default=[],
        metavar="PATH",
        help="answer GET PATH (/queue, /history, /object_info, /prompt) with JSON of the "
        "wrong shape (repeatable)",
    )
    hostile.add_argument(
        "--http-huge",
        action="append",
        default=[],
        metavar="PATH",
        help="answer GET PATH with a huge JSON body (repeatable)",
    )
    hostile.add_argument(
        "--http-huge-bytes",
        type=int,
        default=300 * 1024 * 1024,
        metavar="N",
        help="size of the huge answers (default 300 MiB)",
    )
    hostile.add_argument(
        "--view-endless", action="store_true", help="/view streams bytes without end"
    )
    hostile.add_argument(
        "--hostile-output-names",
        action="store_true",
        help="history names output files with absolute paths and ../",
    )
    hostile.add_argument(
        "--ws-padding",
        type=int,
        default=0,
        metavar="BYTES",
        help="pad every WebSocket message with this many bytes",
    )
    hostile.add_argument(
        "--ws-flood-node-changes",
        type=int,
        default=0,
        metavar="N",
        help="send each prompt's client N extra node changes when it starts",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def simulator_from_args(args: argparse.Namespace) -> Simulator:
    faults = Faults(
        http_latency_seconds=args.http_latency,
        http_500_paths=set(args.http_500),
        ws_drop_after_messages=args.ws_drop_after,
        fail_node_class=args.fail_node,
        malformed_messages=set(args.ws_malformed),
        malformed_answers=set(args.http_malformed),
        huge_answer_paths=set(args.http_huge),
        huge_answer_bytes=args.http_huge_bytes,
        endless_view=args.view_endless,
        hostile_output_names=args.hostile_output_names,
        ws_padding_bytes=args.ws_padding,
        ws_flood_node_changes=args.ws_flood_node_changes,
    )
    return Simulator(
        output_dir=args.output_dir,
        faults=faults,
        step_seconds=args.step_seconds,
        checkpoints=args.checkpoints or DEFAULT_CHECKPOINTS,
        motion_modules=args.motion_modules or DEFAULT_MOTION_MODULES,
        loras=args.loras or DEFAULT_LORAS,
        time_scale=args.time_scale,
        input_dir=args.input_dir,
        preview_method=args.preview_method,
    )


async def serve(sim: Simulator, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await sim.start(host, port)
    print(f"ComfyUI simulator listening on {sim.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(simulator_from_args(args), args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logging.getLogger(__name__).error("cannot start the simulator: %s", exc)
        return 1
    return 0

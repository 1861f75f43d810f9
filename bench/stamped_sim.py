"""The ComfyUI simulator with send-time stamps on its ``progress`` messages.

Run as ``python -m bench.stamped_sim --port P --stamps-port Q --output-dir D``.
It is the project's own :class:`~comfyui_grpc.simulator.Simulator`; the only
addition is a wrapper around the WebSocket hub's delivery that notes
``time.monotonic()`` just before each ``progress`` frame is written to a
socket, and a second small HTTP listener that hands those stamps out:

- ``POST /stamps`` with ``{"prompt_ids": [...]}`` answers
  ``[[prompt_id, kind, node, value, t_send], ...]`` for those prompts, where
  kind is ``progress`` or ``state`` (a ``progress_state`` frame, stamped for
  its running node: comfy-api-proxy relays those too);
- ``POST /stamps/clear`` forgets every stamp.

CLOCK_MONOTONIC is shared by all processes on the machine, so the client
process can subtract these stamps from its own receive times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.simulator import ws as sim_ws

Stamp = tuple[str, str, str, int, float]
STAMPS: dict[str, list[Stamp]] = defaultdict(list)


def _stamp(event: Any, data: Any) -> None:
    if not isinstance(data, dict):
        return
    prompt_id = str(data.get("prompt_id", ""))
    if event == "progress":
        node, value = str(data.get("node", "")), int(data.get("value", 0))
        STAMPS[prompt_id].append((prompt_id, "progress", node, value, time.monotonic()))
    elif event == "progress_state":
        for node_id, node in (data.get("nodes") or {}).items():
            if node.get("state") == "running" and node.get("value"):
                value = int(node["value"])
                STAMPS[prompt_id].append((prompt_id, "state", node_id, value, time.monotonic()))


def install_stamping() -> None:
    original = sim_ws.SocketHub._deliver

    async def deliver(self: sim_ws.SocketHub, sock: sim_ws.Socket, event: Any, data: Any) -> None:
        if event in ("progress", "progress_state") and not sock.ws.closed:
            _stamp(event, data)
        await original(self, sock, event, data)

    sim_ws.SocketHub._deliver = deliver  # type: ignore[method-assign]


async def get_stamps(request: web.Request) -> web.Response:
    body = await request.json()
    wanted = body.get("prompt_ids") or list(STAMPS)
    out = [list(s) for pid in wanted for s in STAMPS.get(pid, ())]
    return web.json_response(out)


async def clear_stamps(request: web.Request) -> web.Response:
    STAMPS.clear()
    return web.json_response({"ok": True})


async def main_async(args: argparse.Namespace) -> None:
    install_stamping()
    sim = Simulator(output_dir=args.output_dir, step_seconds=args.step_seconds)
    await sim.start(host="127.0.0.1", port=args.port)
    app = web.Application()
    app.router.add_post("/stamps", get_stamps)
    app.router.add_post("/stamps/clear", clear_stamps)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.stamps_port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {sim.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stamps-port", type=int, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

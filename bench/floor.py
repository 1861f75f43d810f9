"""The floor of this stack: a minimal grpc.aio GenerationService.

``Generate`` only forwards each call to ComfyUI's ``/prompt`` through one
pooled httpx client and answers with the prompt id. ``StreamProgress`` is a
bare broadcast: one WebSocket to ComfyUI, each ``progress`` frame turned into
one ``ProgressEvent`` and put on every subscriber's queue for that prompt.
No validation, no job state, no storage: whatever the gateway does beyond
this is what the comparison prices.

Run as ``python -m bench.floor --port P --comfyui-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import grpc
import websockets
from comfyui_grpc import heap
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from google.protobuf import json_format

from .pool import ComfyUIPool

END = None


class FloorServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, comfyui_url: str) -> None:
        self.url = comfyui_url.rstrip("/")
        self.client_id = f"bench-floor-{uuid.uuid4().hex}"
        self.http = ComfyUIPool(self.url)
        self.subscribers: dict[str, set[asyncio.Queue[pb.ProgressEvent | None]]] = defaultdict(set)
        self.sequence = 0
        self.connected = asyncio.Event()

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        if request.WhichOneof("input") == "workflow_json":
            graph = request.workflow_json
        else:
            graph = json.dumps(json_format.MessageToDict(request.workflow))
        prompt_id = str(uuid.uuid4())
        body = (
            f'{{"prompt": {graph}, "client_id": "{self.client_id}", "prompt_id": "{prompt_id}"}}'
        ).encode()
        response = await self.http.post("/prompt", body)
        if response.status_code != 200:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, response.text[:200])
        return pb.GenerateResponse(job_id=prompt_id, state=job_pb2.JOB_STATE_QUEUED)

    async def StreamProgress(
        self, request: pb.StreamProgressRequest, context: Any
    ) -> AsyncIterator[pb.ProgressEvent]:
        queue: asyncio.Queue[pb.ProgressEvent | None] = asyncio.Queue()
        subscribers = self.subscribers[request.job_id]
        subscribers.add(queue)
        try:
            # A first message so the client knows the subscription is live.
            yield pb.ProgressEvent(job_id=request.job_id, sequence=0)
            while True:
                event = await queue.get()
                if event is END:
                    return
                yield event
        finally:
            subscribers.discard(queue)

    def _fan_out(self, prompt_id: str, event: pb.ProgressEvent | None) -> None:
        for queue in self.subscribers.get(prompt_id, ()):
            queue.put_nowait(event)

    async def read_socket(self) -> None:
        url = self.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        while True:
            try:
                async with websockets.connect(url, max_size=None, compression=None) as ws:
                    self.connected.set()
                    async for frame in ws:
                        if isinstance(frame, bytes):
                            continue
                        self._on_text(frame)
            except (OSError, websockets.WebSocketException):
                self.connected.clear()
                await asyncio.sleep(0.2)

    def _on_text(self, frame: str) -> None:
        """One ComfyUI message for a prompt -> at most one ProgressEvent to its subscribers.

        The same kinds of events the gateway sends for those messages, so both
        fan out the same number of messages per job.
        """
        message = json.loads(frame)
        kind = message.get("type")
        data = message.get("data") or {}
        prompt_id = data.get("prompt_id")
        if not prompt_id or prompt_id not in self.subscribers:
            return
        self.sequence += 1
        event = pb.ProgressEvent(
            job_id=prompt_id, sequence=self.sequence, state=job_pb2.JOB_STATE_RUNNING
        )
        event.event_time.GetCurrentTime()
        if kind == "progress":
            value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
            event.node_progress.CopyFrom(
                pb.NodeProgress(
                    node_id=str(data.get("node", "")),
                    value=value,
                    max=maximum,
                    node_fraction=value / maximum if maximum else 0.0,
                )
            )
        elif kind == "execution_start":
            event.started.SetInParent()
        elif kind == "execution_cached":
            event.nodes_cached.node_ids.extend(str(n) for n in data.get("nodes") or ())
        elif kind == "executing" and data.get("node") is not None:
            event.node_started.node_id = str(data["node"])
        elif kind == "executed":
            event.node_finished.node_id = str(data.get("node", ""))
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            event.state = job_pb2.JOB_STATE_SUCCEEDED
            event.succeeded.SetInParent()
            self._fan_out(prompt_id, event)
            self._fan_out(prompt_id, END)
            return
        else:
            return
        self._fan_out(prompt_id, event)


async def serve(port: int, comfyui_url: str) -> None:
    servicer = FloorServicer(comfyui_url)  # type: ignore[abstract]  # two methods only
    server = grpc.aio.server()
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    reader = asyncio.create_task(servicer.read_socket())
    await server.start()
    await asyncio.wait_for(servicer.connected.wait(), 20)
    heap.settle_after_start()  # the same collector settings as the gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await server.stop(0.5)
        await servicer.http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--comfyui-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.comfyui_url))


if __name__ == "__main__":
    main()

"""The ceiling for Python gRPC here: a grpc.aio ``Generate`` that does no I/O.

It decodes the same ``GenerateRequest`` the gateway gets and answers a
``GenerateResponse`` at once. Run as ``python -m bench.echo --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import uuid
from typing import Any

import grpc
from comfyui_grpc import heap
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2


class EchoServicer(pb_grpc.GenerationServiceServicer):
    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        return pb.GenerateResponse(job_id=str(uuid.uuid4()), state=job_pb2.JOB_STATE_QUEUED)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    servicer = EchoServicer()  # type: ignore[abstract]  # only Generate is served
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    heap.settle_after_start()  # the same collector settings as the gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()

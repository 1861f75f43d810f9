"""A reference proxy built the way the original design built it.

FastAPI under uvicorn (its defaults), JSON over HTTP:

- ``POST /prompt`` with ``{"prompt": graph}`` opens a new ``httpx.AsyncClient``
  for the request, posts the graph to ComfyUI's ``/prompt`` and answers
  ``{"prompt_id": ...}``;
- ``WS /ws/{prompt_id}`` relays ComfyUI's WebSocket messages for that prompt:
  one upstream socket, each text frame parsed, its ``prompt_id`` looked up,
  and the frame sent to every subscriber of that prompt in turn.

The whole-body base64 artifact path of the original design is in
``bench/copy_worker.py`` (mode ``base64``). Run as
``python -m bench.refproxy --port P --comfyui-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
import websockets
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect


def build_app(comfyui_url: str) -> FastAPI:
    url = comfyui_url.rstrip("/")
    client_id = f"bench-refproxy-{uuid.uuid4().hex}"
    subscribers: dict[str, set[WebSocket]] = defaultdict(set)

    async def read_upstream() -> None:
        ws_url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        while True:
            try:
                async with websockets.connect(ws_url, max_size=None) as upstream:
                    async for frame in upstream:
                        if isinstance(frame, bytes):
                            continue
                        message = json.loads(frame)
                        prompt_id = str((message.get("data") or {}).get("prompt_id"))
                        for ws in list(subscribers.get(prompt_id, ())):
                            try:
                                await ws.send_text(frame)
                            except (RuntimeError, WebSocketDisconnect):
                                subscribers[prompt_id].discard(ws)
            except (OSError, websockets.WebSocketException):
                await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(read_upstream())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(lifespan=lifespan)

    @app.post("/prompt")
    async def submit(body: dict[str, Any]) -> dict[str, Any]:
        prompt_id = str(uuid.uuid4())
        payload = {"prompt": body["prompt"], "client_id": client_id, "prompt_id": prompt_id}
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{url}/prompt", json=payload, timeout=30)
        if response.status_code != 200:
            raise HTTPException(status_code=response.status_code, detail=response.text[:200])
        data = response.json()
        return {"prompt_id": prompt_id, "number": data.get("number")}

    @app.websocket("/ws/{prompt_id}")
    async def relay(websocket: WebSocket, prompt_id: str) -> None:
        await websocket.accept()
        subscribers[prompt_id].add(websocket)
        try:
            await websocket.send_text('{"type": "subscribed"}')
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            subscribers[prompt_id].discard(websocket)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--comfyui-url", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.comfyui_url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()

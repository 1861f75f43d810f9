"""ComfyUI's REST API over pooled httpx clients, kept for a backend's lifetime.

Building an ``httpx.AsyncClient`` costs milliseconds of CPU (its SSL context),
so a backend gets its clients once. There are two: a small pool for the JSON
calls, whose requests are admitted only when a connection is free, and one
for files, whose downloads hold a connection for as long as a file takes.

The JSON pool is small on purpose. ComfyUI answers requests on one event
loop, so more connections buy it no parallelism, while httpcore's pool does
work proportional to its waiting requests times its connections each time a
request starts or ends: 64 concurrent submissions over 64 connections cost
the gateway about 8 ms of CPU each, over 8 connections gated here about 1 ms.

Every call maps transport trouble to :class:`ComfyUIUnavailable` and keeps
the cause.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import ComfyUIUnavailable, ComfyUIValidationError

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
API_CONNECTIONS = 8
"""Connections (and requests in flight) for the JSON calls; see the module docstring."""
FILE_CONNECTIONS = 16
"""Connections for ``/view`` downloads and ``/upload/image``."""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    prompt_id: str
    number: float


@dataclass(frozen=True, slots=True)
class QueueView:
    """ComfyUI's queue: the running prompt ids and the pending ones in run order."""

    running: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    present: frozenset[str] = field(default_factory=frozenset)

    def position(self, prompt_id: str) -> int:
        """1-based place among the pending prompts; 0 when not pending."""
        try:
            return self.pending.index(prompt_id) + 1
        except ValueError:
            return 0


def _sort_key(item: list[Any]) -> tuple[float, int]:
    number = item[0] if item and isinstance(item[0], int | float) else 0
    return (float(number), 0)


class ComfyUIClient:
    def __init__(self, base_url: str, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._api = self._pool(API_CONNECTIONS, timeout)
        self._api_slots = asyncio.Semaphore(API_CONNECTIONS)
        self._files = self._pool(FILE_CONNECTIONS, timeout)

    def _pool(self, connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
        # No Origin header: ComfyUI answers 403 to a loopback Origin that differs from Host.
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._files.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One JSON call, admitted when an API connection is free."""
        async with self._api_slots:
            return await self._send(self._api, method, path, **kwargs)

    async def _send(
        self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path}: {exc!r}",
                maybe_sent=not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout),
            ) from exc
        if response.status_code >= 500:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered {response.status_code} to {method} {path}",
                status=response.status_code,
            )
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered {response.status_code} to {method} {path}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} sent invalid JSON for {method} {path}"
            ) from exc

    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        client_id: str,
        front: bool = False,
    ) -> SubmitResult:
        """Queue a workflow under our prompt id and client id.

        A 200 that still lists ``node_errors`` means ComfyUI dropped the invalid
        outputs and queued the rest; that is raised as a validation error too,
        after the caller-visible prompt has been queued (the caller removes it).
        """
        body: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        if front:
            body["front"] = True
        content = json.dumps(body, allow_nan=False).encode()
        response = await self._request(
            "POST", "/prompt", content=content, headers={"Content-Type": "application/json"}
        )
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 400 and isinstance(data, dict):
            raw_error = data.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            node_errors = data.get("node_errors") or {}
            message = str(error.get("message") or "ComfyUI rejected the workflow")
            raise ComfyUIValidationError(message, error or {}, node_errors)
        if response.status_code != 200 or not isinstance(data, dict):
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered {response.status_code} to POST /prompt"
            )
        node_errors = data.get("node_errors") or {}
        if node_errors:
            raise ComfyUIValidationError(
                "ComfyUI dropped outputs that failed validation", {}, node_errors
            )
        number = data.get("number", 0)
        return SubmitResult(
            prompt_id=str(data.get("prompt_id", prompt_id)),
            number=float(number) if isinstance(number, int | float) else 0.0,
        )

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json={"delete": prompt_ids})

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` only if it is the one running (never global)."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def queue(self) -> QueueView:
        data = await self._json("GET", "/queue")
        running_items = data.get("queue_running") or []
        pending_items = sorted(data.get("queue_pending") or [], key=_sort_key)
        running = tuple(str(item[1]) for item in running_items if len(item) > 1)
        pending = tuple(str(item[1]) for item in pending_items if len(item) > 1)
        return QueueView(running=running, pending=pending, present=frozenset(running + pending))

    async def queue_remaining(self) -> int:
        """Prompts queued or running, from ``GET /prompt``: a few bytes, unlike ``/queue``."""
        data = await self._json("GET", "/prompt")
        try:
            return int(data["exec_info"]["queue_remaining"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} sent no queue_remaining from GET /prompt"
            ) from exc

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt, or None while unknown/unfinished."""
        data = await self._json("GET", f"/history/{prompt_id}")
        if not isinstance(data, dict):
            return None
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/history", json={"delete": prompt_ids})

    async def object_info(self) -> dict[str, Any]:
        """Every node class with its inputs (combo inputs list the model files)."""
        data = await self._json("GET", "/object_info")
        return data if isinstance(data, dict) else {}

    async def system_stats(self) -> dict[str, Any]:
        data = await self._json("GET", "/system_stats")
        return data if isinstance(data, dict) else {}

    @asynccontextmanager
    async def view(
        self, *, filename: str, subfolder: str, type: str
    ) -> AsyncIterator[httpx.Response]:
        """Stream one output file; the body is read by the caller in chunks."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        request = self._files.build_request("GET", "/view", params=params)
        try:
            response = await self._files.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url}: GET /view failed: {exc!r}"
            ) from exc
        try:
            if response.status_code != 200:
                raise ComfyUIUnavailable(
                    f"ComfyUI at {self.base_url} answered {response.status_code} "
                    f"to GET /view for {subfolder}/{filename} ({type})",
                    status=response.status_code,
                )
            yield response
        finally:
            await response.aclose()

    async def upload_image(
        self,
        *,
        name: str,
        data: Any,
        content_type: str,
        subfolder: str = "",
        overwrite: bool = False,
    ) -> dict[str, Any]:
        files = {"image": (name, data, content_type)}
        form = {"subfolder": subfolder, "type": "input"}
        if overwrite:
            form["overwrite"] = "true"
        response = await self._send(self._files, "POST", "/upload/image", files=files, data=form)
        if response.status_code != 200:
            raise ComfyUIValidationError(
                f"ComfyUI refused the upload of {name!r} ({response.status_code})", {}, {}
            )
        result = response.json()
        return result if isinstance(result, dict) else {}

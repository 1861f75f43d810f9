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
the cause. Nothing ComfyUI answers is trusted: a body is read streamed and
cut off past ``max_answer_bytes``, and every answer is checked against the
shape the gateway relies on; what does not fit raises
:class:`ComfyUIProtocolError` (a ``ComfyUIUnavailable``, so every caller's
existing handling applies) and is counted, never a TypeError or KeyError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..redact import redact_url
from .errors import ComfyUIProtocolError, ComfyUIUnavailable, ComfyUIValidationError
from .outputs import history_entry_problem
from .reporting import ProtocolErrors

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
API_CONNECTIONS = 8
"""Connections (and requests in flight) for the JSON calls; see the module docstring."""
FILE_CONNECTIONS = 16
"""Connections for ``/view`` downloads and ``/upload/image``."""
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Default cap on one JSON answer (``--max-comfyui-answer-bytes``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON call's status and its whole (bounded) body."""

    status: int
    body: bytes


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


def _queue_ids(data: dict[str, Any], key: str) -> list[str] | None:
    """Prompt ids of ``queue_running``/``queue_pending`` in run order, or None if malformed.

    Each item is ``[number, prompt_id, prompt, extra_data, outputs, ...]``.
    """
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        return None
    numbered: list[tuple[float, str]] = []
    for item in items:
        if not isinstance(item, list) or len(item) < 2 or not isinstance(item[1], str):
            return None
        number = item[0]
        if isinstance(number, bool) or not isinstance(number, int | float):
            return None
        numbered.append((float(number), item[1]))
    numbered.sort(key=lambda pair: pair[0])
    return [prompt_id for _, prompt_id in numbered]


class ComfyUIClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        errors: ProtocolErrors | None = None,
    ) -> None:
        # Shown in messages without user-info; the pools send the full URL and headers.
        self.base_url = redact_url(base_url.rstrip("/"))
        self._target = (base_url.rstrip("/"), dict(headers or {}))
        self.max_answer_bytes = max_answer_bytes
        self.errors = errors or ProtocolErrors(self.base_url)
        self._api = self._pool(API_CONNECTIONS, timeout)
        self._api_slots = asyncio.Semaphore(API_CONNECTIONS)
        self._files = self._pool(FILE_CONNECTIONS, timeout)

    def _pool(self, connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
        # No Origin header: ComfyUI answers 403 to a loopback Origin that differs from Host.
        return httpx.AsyncClient(
            base_url=self._target[0],
            headers=self._target[1],
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._files.aclose()

    def _protocol(self, kind: str, what: str) -> ComfyUIProtocolError:
        """Count a malformed answer and build the error to raise for it."""
        message = f"ComfyUI at {self.base_url} {what}"
        self.errors.report(kind, message)
        return ComfyUIProtocolError(message, kind=kind)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Answer:
        """One JSON call, admitted when an API connection is free."""
        async with self._api_slots:
            return await self._send(self._api, method, path, **kwargs)

    async def _send(self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Answer:
        """Send a request and read its body, at most ``max_answer_bytes`` of it."""
        request = http.build_request(method, path, **kwargs)
        try:
            response = await http.send(request, stream=True)
            try:
                if response.status_code >= 500:
                    raise ComfyUIUnavailable(
                        f"ComfyUI at {self.base_url} answered {response.status_code} "
                        f"to {method} {path}",
                        status=response.status_code,
                    )
                body = await self._bounded_body(response, method, path)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path}: {exc!r}",
                maybe_sent=not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout),
            ) from exc
        return Answer(response.status_code, body)

    async def _bounded_body(self, response: httpx.Response, method: str, path: str) -> bytes:
        limit = self.max_answer_bytes
        too_large = f"sent more than {limit} bytes for {method} {path}; the answer was cut off"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._protocol("too_large", too_large)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise self._protocol("too_large", too_large)
        return bytes(body)

    def _decode(self, answer: Answer, method: str, path: str) -> Any:
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError) as exc:
            raise self._protocol(
                "invalid_json", f"sent invalid JSON for {method} {path}: {str(exc)[:100]}"
            ) from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = await self._request(method, path, **kwargs)
        if answer.status != 200:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered {answer.status} to {method} {path}",
                status=answer.status,
            )
        return self._decode(answer, method, path)

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
        answer = await self._request(
            "POST", "/prompt", content=content, headers={"Content-Type": "application/json"}
        )
        if answer.status == 400:
            data = self._decode(answer, "POST", "/prompt")
            error = data.get("error") if isinstance(data, dict) else None
            node_errors = data.get("node_errors") if isinstance(data, dict) else None
            if not isinstance(error, dict | str) or not isinstance(node_errors, dict | None):
                raise self._protocol("bad_submit", "answered 400 to POST /prompt without an error")
            if isinstance(error, str):  # older ComfyUI: the message alone
                error = {"message": error}
            message = str(error.get("message") or "ComfyUI rejected the workflow")
            raise ComfyUIValidationError(message, error, node_errors or {})
        if answer.status != 200:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered {answer.status} to POST /prompt",
                status=answer.status,
            )
        data = self._decode(answer, "POST", "/prompt")
        if not isinstance(data, dict):
            raise self._protocol("bad_submit", "answered POST /prompt with no JSON object")
        node_errors = data.get("node_errors")
        number = data.get("number", 0)
        answered_id = data.get("prompt_id", prompt_id)
        if (
            not isinstance(node_errors, dict | None)
            or isinstance(number, bool)
            or not isinstance(number, int | float)
            or answered_id != prompt_id
        ):
            raise self._protocol(
                "bad_submit",
                "answered POST /prompt with a malformed node_errors, number or prompt_id",
            )
        if node_errors:
            raise ComfyUIValidationError(
                "ComfyUI dropped outputs that failed validation", {}, node_errors
            )
        return SubmitResult(prompt_id=prompt_id, number=float(number))

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json={"delete": prompt_ids})

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` only if it is the one running (never global)."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def queue(self) -> QueueView:
        data = await self._json("GET", "/queue")
        running = _queue_ids(data, "queue_running") if isinstance(data, dict) else None
        pending = _queue_ids(data, "queue_pending") if isinstance(data, dict) else None
        if running is None or pending is None:
            raise self._protocol("bad_queue", "sent a malformed GET /queue answer")
        return QueueView(
            running=tuple(running), pending=tuple(pending), present=frozenset(running + pending)
        )

    async def queue_remaining(self) -> int:
        """Prompts queued or running, from ``GET /prompt``: a few bytes, unlike ``/queue``."""
        data = await self._json("GET", "/prompt")
        info = data.get("exec_info") if isinstance(data, dict) else None
        remaining = info.get("queue_remaining") if isinstance(info, dict) else None
        if isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0:
            raise self._protocol("bad_prompt_info", "sent no queue_remaining from GET /prompt")
        return remaining

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt, or None while unknown/unfinished."""
        data = await self._json("GET", f"/history/{prompt_id}")
        if not isinstance(data, dict):
            raise self._protocol("bad_history", "answered GET /history/{id} with no JSON object")
        entry = data.get(prompt_id)
        if entry is None:
            return None
        problem = history_entry_problem(entry)
        if problem is not None:
            raise self._protocol("bad_history", f"sent a malformed history entry: {problem}")
        assert isinstance(entry, dict)
        return entry

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/history", json={"delete": prompt_ids})

    async def object_info(self) -> dict[str, Any]:
        """Every node class with its inputs (combo inputs list the model files)."""
        data = await self._json("GET", "/object_info")
        return data if isinstance(data, dict) else {}

    async def system_stats(self) -> dict[str, Any]:
        data = await self._json("GET", "/system_stats")
        if not isinstance(data, dict):
            raise self._protocol("bad_system_stats", "answered GET /system_stats with no object")
        return data

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
        answer = await self._send(self._files, "POST", "/upload/image", files=files, data=form)
        if answer.status != 200:
            raise ComfyUIValidationError(
                f"ComfyUI refused the upload of {name!r} ({answer.status})", {}, {}
            )
        result = self._decode(answer, "POST", "/upload/image")
        if (
            not isinstance(result, dict)
            or not isinstance(result.get("name"), str)
            or not isinstance(result.get("subfolder", ""), str)
        ):
            raise self._protocol("bad_upload", "answered POST /upload/image without a file name")
        return result

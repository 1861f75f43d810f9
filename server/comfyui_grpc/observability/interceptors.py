"""Server interceptors: what happens around every call.

grpc.aio interceptors see only the method name before the handler runs, so
they wrap the handler's behaviour (unary or streaming) in place. Metrics,
the drain gate and the decode guard share one wrapper (:class:`CallInterceptor`),
built once per method: every layer of wrapping is another async-generator
hop for each message a stream sends, paid a thousand times over when a
thousand streams relay the same progress event.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from ..api.status import to_status
from ..errors import GatewayError, InvalidArgument, Unauthenticated, Unavailable
from ..tasks import within
from .metrics import Metrics

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]


def _code_of(context: Any, error: BaseException | None) -> str:
    """The status the call ended with: set by abort, else OK or UNKNOWN."""
    code = context.code()
    if code is not None:
        return str(getattr(code, "name", code))
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


def _rewrap(
    handler: Handler,
    unary: Callable[..., Any],
    stream: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A handler of the same shape around wrapped behaviour (and deserializer)."""
    deserialize = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), deserialize, serialize
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), deserialize, serialize
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), deserialize, serialize
        )
    return grpc.stream_stream_rpc_method_handler(
        stream(handler.stream_stream), deserialize, serialize
    )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method outside ``open_services``.

    Tokens are compared in constant time; a missing or wrong token is
    UNAUTHENTICATED. Health and reflection stay open for probes and tools.

    The check runs on the call's headers, before its message is read: a
    refused call is answered by a handler that never reads nor decodes the
    request (see :func:`_refusal`), so an unauthenticated caller cannot make
    the gateway hold or parse megabytes.
    """

    def __init__(self, tokens: Iterable[str], open_services: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self._open = tuple(f"/{service}/" for service in open_services)
        self._status = to_status(
            Unauthenticated(
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
                reason="BAD_TOKEN",
            )
        )
        self._refusals: dict[str, tuple[Handler, Handler]] = {}

    def _authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key.lower() != "authorization":
                continue
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer":
                return False
            candidate = token.strip().encode()
            # Compare against every token so timing reveals nothing about which matched.
            matched = False
            for known in self._tokens:
                matched |= hmac.compare_digest(candidate, known)
            return matched
        return False

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._open):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        cached = self._refusals.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _refusal(handler, self._status))
            self._refusals[method] = cached
        return cached[1]


def _unread(data: bytes) -> None:
    """The deserializer of a refused call: never parses (and is never reached)."""


def _refusal(handler: Handler, status: grpc.Status) -> Handler:
    """A handler that only aborts with ``status``, without reading the request.

    It is request-streaming whatever the method's shape: grpc.aio reads a
    unary request whole (up to the message limit) and decodes it before the
    behaviour runs, while a streaming one is read only when iterated, which
    a refusal never does. The client cannot tell: it sees the status.
    """

    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    serialize = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, _unread, serialize)
    return grpc.stream_unary_rpc_method_handler(refuse, _unread, serialize)


class DrainGate:
    """Counts calls in flight; once closed, new calls are refused with UNAVAILABLE.

    Graceful shutdown closes the gate, waits for the calls in flight (open
    progress streams included) up to the grace period, then stops the server.
    Health and reflection are neither counted nor refused: probes must keep
    seeing NOT_SERVING while the gateway drains.
    """

    def __init__(self, exempt_services: Iterable[str]) -> None:
        self._exempt = tuple(f"/{service}/" for service in exempt_services)
        self.closed = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.refusal = to_status(
            Unavailable(
                "the gateway is shutting down; retry (another replica will answer)",
                reason="SHUTTING_DOWN",
            )
        )

    def exempt(self, method: str) -> bool:
        return method.startswith(self._exempt)

    def close(self) -> None:
        self.closed = True

    async def wait_idle(self, timeout: float) -> bool:
        return await within(self._idle.wait(), timeout)

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()


RequestCheck = Callable[[bytes], None]
"""Looks at a request's bytes before they are decoded; raises a GatewayError to refuse."""

OPEN_MESSAGE_BYTES = 64 * 1024
"""Largest request an open (unauthenticated) service takes: health and
reflection requests are a few bytes, and nobody may make the gateway decode
megabytes without a token."""


class _Refused:
    """Stands in for a request message that was not decoded: undecodable, or
    refused by a check on its bytes."""

    __slots__ = ("status",)

    def __init__(self, status: grpc.Status) -> None:
        self.status = status


async def _refuse(context: Any, marker: _Refused) -> None:
    status = marker.status
    await context.abort(status.code, status.details, status.trailing_metadata)


def at_most(limit: int) -> RequestCheck:
    """A check refusing requests larger than ``limit`` bytes, before decoding."""

    def check(data: bytes) -> None:
        if len(data) > limit:
            raise InvalidArgument(
                f"the request is {len(data)} bytes; this method takes at most {limit}",
                reason="REQUEST_TOO_LARGE",
            )

    return check


def _safe_deserializer(
    deserialize: Callable[[bytes], Any], check: RequestCheck | None
) -> Callable[[bytes], Any]:
    """grpc.aio answers UNKNOWN when a request fails to deserialize (bad bytes,
    invalid UTF-8, nesting beyond protobuf's limit); a marker lets the wrapper
    answer INVALID_ARGUMENT instead. ``check`` sees the bytes first, so a
    request it refuses is never decoded."""

    def safe(data: bytes) -> Any:
        try:
            if check is not None:
                check(data)
            return deserialize(data)
        except GatewayError as exc:
            return _Refused(to_status(exc))
        except Exception as exc:
            return _Refused(
                to_status(
                    InvalidArgument(
                        f"the request could not be decoded: {exc}", reason="UNDECODABLE"
                    )
                )
            )

    return safe


async def _checked_messages(iterator: Any, context: Any) -> AsyncIterator[Any]:
    async for item in iterator:
        if isinstance(item, _Refused):
            await _refuse(context, item)
        yield item


class _Accounted:
    """One call: in flight at the gate (if counted), then timed and counted by code."""

    __slots__ = ("_context", "_gate", "_handled", "_name", "_seconds", "_start")

    def __init__(
        self, name: str, context: Any, gate: DrainGate | None, seconds: Any, handled: Any
    ) -> None:
        self._name = name
        self._context = context
        self._gate = gate
        self._seconds = seconds
        self._handled = handled
        self._start = 0.0

    def __enter__(self) -> None:
        if self._gate is not None:
            self._gate.enter()
        self._start = time.perf_counter()

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if self._gate is not None:
            self._gate.leave()
        self._seconds.observe(time.perf_counter() - self._start)
        self._handled.labels(self._name, _code_of(self._context, error)).inc()


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, drain accounting and request checks around every call.

    Each call is timed and counted by method and final status code; calls
    outside the gate's exempt services are counted in flight, and refused
    once the gate is closed. A request that cannot be decoded is refused
    with INVALID_ARGUMENT; so is one that a check in ``request_checks``
    (by full method name) refuses from its bytes, before decoding. Requests
    to the exempt (open) services may be at most ``open_message_bytes``.
    The wrapped handler is built once per method (and handler).
    """

    def __init__(
        self,
        metrics: Metrics,
        gate: DrainGate,
        *,
        request_checks: Mapping[str, RequestCheck] | None = None,
        open_message_bytes: int = OPEN_MESSAGE_BYTES,
    ) -> None:
        self.metrics = metrics
        self.gate = gate
        self._checks = dict(request_checks or {})
        self._open_check = at_most(open_message_bytes)
        self._wrapped: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        counted = not self.gate.exempt(method)
        if counted and self.gate.closed:
            return _refusal(handler, self.gate.refusal)
        key = (method, id(handler))
        cached = self._wrapped.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        check = self._checks.get(method) if counted else self._open_check
        wrapped = self._wrap(handler, method.rsplit("/", 1)[-1], counted, check)
        self._wrapped[key] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: Handler, name: str, counted: bool, check: RequestCheck | None
    ) -> Handler:
        seconds = self.metrics.rpc_seconds.labels(name)
        handled = self.metrics.rpc_handled
        gate = self.gate if counted else None
        request_streaming = bool(handler.request_streaming)

        async def admit(request: Any, context: Any) -> Any:
            """The request to hand on; a refused one is answered here."""
            if request_streaming:
                return _checked_messages(request, context)
            if isinstance(request, _Refused):
                await _refuse(context, request)
            return request

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: Any) -> Any:
                with _Accounted(name, context, gate, seconds, handled):
                    return await behaviour(await admit(request, context), context)

            return call

        def stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(behaviour):
                # A coroutine that writes with context.write (e.g. health Watch).
                return unary(behaviour)

            async def call(request: Any, context: Any) -> AsyncIterator[Any]:
                with _Accounted(name, context, gate, seconds, handled):
                    async for item in behaviour(await admit(request, context), context):
                        yield item

            return call

        deserialize = handler.request_deserializer
        safe = _safe_deserializer(deserialize, check) if deserialize is not None else None
        return _rewrap(handler, unary, stream, safe)

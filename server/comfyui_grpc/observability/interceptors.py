"""Server interceptors: RPC metrics and bearer-token authentication.

grpc.aio interceptors see only the method name before the handler runs, so
each wraps the handler's behaviour (unary or streaming) in place.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from ..api.status import to_status
from ..errors import InvalidArgument, Unauthenticated, Unavailable
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


def _rewrap(handler: Handler, unary: Callable[..., Any], stream: Callable[..., Any]) -> Handler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        seconds = self.metrics.rpc_seconds.labels(method)
        handled = self.metrics.rpc_handled

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def timed(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await behaviour(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    seconds.observe(time.perf_counter() - start)
                    handled.labels(method, _code_of(context, error)).inc()

            return timed

        def stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(behaviour):
                # A coroutine that writes with context.write (e.g. health Watch).
                return unary(behaviour)

            async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    async for item in behaviour(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    seconds.observe(time.perf_counter() - start)
                    handled.labels(method, _code_of(context, error)).inc()

            return timed

        return _rewrap(handler, unary, stream)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method outside ``open_services``.

    Tokens are compared in constant time; a missing or wrong token is
    UNAUTHENTICATED. Health and reflection stay open for probes and tools.
    """

    def __init__(self, tokens: Iterable[str], open_services: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self._open = tuple(f"/{service}/" for service in open_services)

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
        if handler is None or handler_call_details.method.startswith(self._open):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusal(
            handler,
            to_status(
                Unauthenticated(
                    "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
                    reason="BAD_TOKEN",
                )
            ),
        )


def _refusal(handler: Handler, status: grpc.Status) -> Handler:
    """A handler of the same shape that only aborts with ``status``."""

    def unary(_: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(status.code, status.details, status.trailing_metadata)

        return refuse

    return _rewrap(handler, unary, unary)


class DrainGate(grpc.aio.ServerInterceptor):
    """Counts calls in flight; once closed, refuses new ones with UNAVAILABLE.

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
        self._status = to_status(
            Unavailable(
                "the gateway is shutting down; retry (another replica will answer)",
                reason="SHUTTING_DOWN",
            )
        )

    def close(self) -> None:
        self.closed = True

    async def wait_idle(self, timeout: float) -> bool:
        return await within(self._idle.wait(), timeout)

    def _enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        if self.closed:
            return _refusal(handler, self._status)

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def counted(request: Any, context: Any) -> Any:
                self._enter()
                try:
                    return await behaviour(request, context)
                finally:
                    self._leave()

            return counted

        def stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(behaviour):
                return unary(behaviour)

            async def counted(request: Any, context: Any) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for item in behaviour(request, context):
                        yield item
                finally:
                    self._leave()

            return counted

        return _rewrap(handler, unary, stream)


class _Undecodable:
    """Stands in for a request message that could not be decoded."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Turns undecodable request bytes into INVALID_ARGUMENT.

    grpc.aio answers UNKNOWN when a request fails to deserialize (bad bytes,
    invalid UTF-8, nesting beyond protobuf's limit). Here the deserializer
    hands a marker to the handler instead, which aborts with a status the
    caller can act on.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def safe(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as exc:
                return _Undecodable(exc)

        async def refuse(context: Any, marker: _Undecodable) -> None:
            status = to_status(
                InvalidArgument(
                    f"the request could not be decoded: {marker.error}", reason="UNDECODABLE"
                )
            )
            await context.abort(status.code, status.details, status.trailing_metadata)

        def checked(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            if handler.request_streaming:

                async def messages(iterator: Any, context: Any) -> AsyncIterator[Any]:
                    async for item in iterator:
                        if isinstance(item, _Undecodable):
                            await refuse(context, item)
                        yield item

                if inspect.isasyncgenfunction(behaviour):

                    async def stream_in_out(iterator: Any, context: Any) -> AsyncIterator[Any]:
                        async for item in behaviour(messages(iterator, context), context):
                            yield item

                    return stream_in_out

                async def stream_in(iterator: Any, context: Any) -> Any:
                    return await behaviour(messages(iterator, context), context)

                return stream_in
            if inspect.isasyncgenfunction(behaviour):

                async def unary_in_stream_out(request: Any, context: Any) -> AsyncIterator[Any]:
                    if isinstance(request, _Undecodable):
                        await refuse(context, request)
                    async for item in behaviour(request, context):
                        yield item

                return unary_in_stream_out

            async def unary_in(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(context, request)
                return await behaviour(request, context)

            return unary_in

        behaviour = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        assert behaviour is not None
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return factory(checked(behaviour), safe, handler.response_serializer)

"""Server interceptors: observability, error mapping and caller auth.

Installed outermost first: `Observability` (request id, access log, metrics) →
`ErrorMapping` (the one place domain errors become gRPC statuses) → `CallerAuth`
(authentication and default-deny authorization by caller × app × RPC). Authorization
needs the request's `app_id`, so every interceptor wraps the method handler and runs
once the request is deserialized. On a bidirectional stream of the API (the edge's
`DeliverStream`) each request names its own app: the caller is authenticated when the
stream opens, and the servicer authorizes every request through `stream_authorizer`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_status import rpc_status

from wxplatform.config import CallerConfig, hash_credential
from wxplatform.core import metrics
from wxplatform.core.servicers.context import current_caller, stream_authorizer
from wxplatform.core.servicers.errors import to_rpc_status
from wxplatform.errors import (
    CallerNotAuthorized,
    CallerUnauthenticated,
    WxPlatformError,
    quoted,
)
from wxplatform.logs import REQUEST_ID_METADATA, new_request_id, request_id

__all__ = ["CallerAuth", "ErrorMapping", "InFlightCalls", "Observability", "default_interceptors"]

log = logging.getLogger("wxplatform.core.rpc")

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Bidi = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]

API_PACKAGE = "acme.wxplatform.v1."
# RPCs that answer with what another RPC gives need that one's grant too:
# InvalidateAccessToken answers with the current access token.
_ALSO_NEEDS = {("TokenService", "InvalidateAccessToken"): (("TokenService", "GetAccessToken"),)}
_KNOWN_CREDENTIALS = 64

# Infrastructure services that load balancers and tools call without a credential.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


def split_method(full_method: str) -> tuple[str, str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Service`, `Method`)."""
    qualified, _, method = full_method.lstrip("/").partition("/")
    return qualified, qualified.rpartition(".")[2], method


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def _refuse_client_streaming(
    requests: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "client streaming is not part of this API")


class _HandlerWrapper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Base: wraps handlers with `unary` / `stream` / `bidi` hooks.

    A method's wrapped handler is built once and reused: the registered handlers never
    change while the server runs, and rebuilding three wrappers per call is measurable.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def unary(self, method: str, behavior: Unary) -> Unary:
        raise NotImplementedError

    def stream(self, method: str, behavior: Stream) -> Stream:
        raise NotImplementedError

    def bidi(self, method: str, behavior: Bidi) -> Bidi:
        """A bidirectional stream: by default wrapped like a server stream."""
        return self.stream(method, behavior)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_streaming:
            qualified = split_method(method)[0]
            if qualified in PUBLIC_SERVICES:  # reflection: no credential, nothing to wrap
                return handler
            behavior = handler.stream_stream
            # The API's only client-streaming RPCs are bidirectional async generators
            # (DeliverStream); anything else is refused, never passed through unwrapped.
            if not (
                qualified.startswith(API_PACKAGE)
                and behavior is not None
                and inspect.isasyncgenfunction(behavior)
            ):
                return grpc.stream_stream_rpc_method_handler(_refuse_client_streaming)
            return grpc.stream_stream_rpc_method_handler(
                self.bidi(method, behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        behavior = handler.unary_stream
        # A streaming handler is either an async generator or a coroutine that writes
        # with `context.write` (grpc_health's Watch); the latter wraps like a unary call.
        wrapped = (
            self.stream(method, behavior)
            if inspect.isasyncgenfunction(behavior)
            else self.unary(method, behavior)
        )
        return grpc.unary_stream_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class InFlightCalls:
    """The tasks running RPC handlers, so that stopping waits until none is left.

    grpc.aio's `server.stop` may return while a cancelled handler is still unwinding (a
    stream whose client went away runs until its next write). Such a handler must not
    touch Redis after core closed its pools: a pool reopened then leaks its connection.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def enter(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        return task

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.discard(task)

    async def finished(self, timeout: float) -> None:
        """Wait for the handlers still running; cancel those that outlast `timeout`."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)


class Observability(_HandlerWrapper):
    """Request id (from `x-request-id` or new), one access log line, RPC metrics, and the
    registry of handlers in flight."""

    def __init__(self, calls: InFlightCalls | None = None) -> None:
        super().__init__()
        self._calls = calls if calls is not None else InFlightCalls()

    def _begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        request_id.set(_metadata(context).get(REQUEST_ID_METADATA) or new_request_id())
        return time.perf_counter()

    def _end(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        code = context.code() or grpc.StatusCode.OK
        code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        metrics.RPC_TOTAL.labels(method, code_name).inc()
        metrics.RPC_DURATION.labels(method).observe(elapsed)
        # Successful calls are counted by metrics and logged at DEBUG; failures at INFO.
        level = logging.DEBUG if code_name == "OK" else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "rpc",
            extra={
                "method": method,
                "code": code_name,
                "caller": current_caller.get() or None,
                "ms": round(elapsed * 1000, 2),
            },
        )

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            task = self._calls.enter()
            started = self._begin(context)
            try:
                return await behavior(request, context)
            finally:
                self._end(method, context, started)
                self._calls.leave(task)

        return observed

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def observed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            task = self._calls.enter()
            started = self._begin(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self._end(method, context, started)
                self._calls.leave(task)

        return observed


class ErrorMapping(_HandlerWrapper):
    """Turns `WxPlatformError` into status + ErrorInfo; anything else into INTERNAL."""

    @staticmethod
    async def _abort(
        method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception
    ) -> None:
        if isinstance(exc, WxPlatformError):
            await context.abort_with_status(rpc_status.to_status(to_rpc_status(exc)))
        # A bug: log it with its stack here, but tell the caller nothing about internals.
        log.exception("unhandled error", extra={"method": method})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def mapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(method, context, exc)
                raise  # unreachable: abort raises

        return mapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def mapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(method, context, exc)

        return mapped


class CallerAuth(_HandlerWrapper):
    """Authenticates the bearer credential and authorizes caller × app × RPC.

    Default deny: a caller may call an RPC for an app only if one of its grants names
    both. The credential travels as `authorization: Bearer <token>`; only its SHA-256
    is configured, so the config file holds nothing that could be replayed.
    """

    def __init__(self, callers: tuple[CallerConfig, ...]) -> None:
        super().__init__()
        self._by_hash: Mapping[str, CallerConfig] = {c.token_sha256: c for c in callers}
        # Credential → caller for the last few credentials seen, so a busy caller's
        # credential is hashed once rather than on every call. Unknown ones are not kept.
        self._known: dict[str, CallerConfig] = {}

    def _caller(self, token: str) -> CallerConfig | None:
        caller = self._known.get(token)
        if caller is None:
            caller = self._by_hash.get(hash_credential(token))
            if caller is not None:
                if len(self._known) >= _KNOWN_CREDENTIALS:
                    self._known.clear()
                self._known[token] = caller
        return caller

    def _authenticate(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> CallerConfig | None:
        """The caller (None for a public service); raises for an unknown one."""
        qualified = split_method(method)[0]
        if qualified in PUBLIC_SERVICES:
            return None
        if not qualified.startswith(API_PACKAGE):  # grants name services of this API only
            raise CallerNotAuthorized(f"{qualified} is not part of the wxplatform API")
        scheme, _, token = _metadata(context).get("authorization", "").partition(" ")
        caller = self._caller(token) if scheme.lower() == "bearer" else None
        if caller is None:
            raise CallerUnauthenticated("missing or unknown caller credential")
        current_caller.set(caller.name)
        return caller

    @staticmethod
    def _check(caller: CallerConfig, method: str, app_id: str) -> None:
        """Default deny: raises unless a grant names both the RPC and the app (and the
        RPCs whose answers it also gives)."""
        _, service, name = split_method(method)
        for rpc in ((service, name), *_ALSO_NEEDS.get((service, name), ())):
            if not any(g.allows(app_id, *rpc) for g in caller.grants):
                raise CallerNotAuthorized(
                    f"caller {caller.name!r} may not call {'/'.join(rpc)} for app {quoted(app_id)}"
                )

    def _authorize(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Raises for a refused call."""
        caller = self._authenticate(method, context)
        if caller is not None:
            self._check(caller, method, getattr(request, "app_id", ""))

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def authorized(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._authorize(method, request, context)
            return await behavior(request, context)

        return authorized

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def authorized(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            self._authorize(method, request, context)
            async for item in behavior(request, context):
                yield item

        return authorized

    def bidi(self, method: str, behavior: Bidi) -> Bidi:
        async def authorized(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            caller = self._authenticate(method, context)
            assert caller is not None  # public services are never wrapped as bidi
            _, service, name = split_method(method)
            if not any(g.names(service, name) for g in caller.grants):
                # No grant names the RPC for any app: refuse the stream itself.
                raise CallerNotAuthorized(f"caller {caller.name!r} may not call {service}/{name}")
            stream_authorizer.set(lambda app_id: self._check(caller, method, app_id))
            async for item in behavior(requests, context):
                yield item

        return authorized


def default_interceptors(
    callers: tuple[CallerConfig, ...], calls: InFlightCalls | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor chain, outermost first (`calls` tracks the handlers in flight)."""
    return [Observability(calls), ErrorMapping(), CallerAuth(callers)]

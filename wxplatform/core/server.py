"""Core's composition root: wires adapters, services and servicers into a gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from acme.wxplatform.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    ingress_service_pb2,
    ingress_service_pb2_grpc,
    messaging_service_pb2,
    messaging_service_pb2_grpc,
    oauth_service_pb2,
    oauth_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from wxplatform.background import Background
from wxplatform.clock import Clock, SystemClock
from wxplatform.config import Settings
from wxplatform.core import metrics
from wxplatform.core.adapters.credential_store import CredentialStore
from wxplatform.core.adapters.event_log import EventLog
from wxplatform.core.adapters.identity_store import IdentityStore
from wxplatform.core.adapters.ingress_store import IngressStore
from wxplatform.core.adapters.message_store import MessageStore
from wxplatform.core.adapters.session_store import SessionStore
from wxplatform.core.adapters.wechat_client import WeChatClient
from wxplatform.core.metrics import MetricsServer
from wxplatform.core.servicers.events import EventServicer
from wxplatform.core.servicers.ingress import IngressServicer
from wxplatform.core.servicers.interceptors import InFlightCalls, default_interceptors
from wxplatform.core.servicers.messaging import MessagingServicer
from wxplatform.core.servicers.oauth import OAuthServicer
from wxplatform.core.servicers.sessions import SessionServicer
from wxplatform.core.servicers.tokens import TokenServicer
from wxplatform.core.services.events import EventService
from wxplatform.core.services.identity import IdentityDeps
from wxplatform.core.services.ingress import IngressService
from wxplatform.core.services.messaging import MessagingService
from wxplatform.core.services.mini_program import MiniProgramIdentity
from wxplatform.core.services.sessions import SessionService
from wxplatform.core.services.tokens import TokenService
from wxplatform.core.services.vault import Vault
from wxplatform.core.services.web_login import WebLogin

__all__ = ["API_SERVICES", "CoreServer", "create_server"]

REFRESH_INTERVAL = 30.0  # seconds between background passes over every app's token

log = logging.getLogger("wxplatform.core")

# Every service of the public API, fully qualified.
API_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (ingress_service_pb2, "IngressService"),
        (event_service_pb2, "EventService"),
        (messaging_service_pb2, "MessagingService"),
        (token_service_pb2, "TokenService"),
        (oauth_service_pb2, "OAuthService"),
        (session_service_pb2, "SessionService"),
    )
)


@dataclass
class CoreServer:
    """A started core: its gRPC server, bound port, health servicer and metrics endpoint."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    metrics_server: MetricsServer | None
    drain_seconds: float
    stopping: asyncio.Event
    event_log: EventLog
    session_store: SessionStore
    wechat: WeChatClient
    tokens: TokenService
    refresher: asyncio.Task[None]
    background: Background
    calls: InFlightCalls

    async def stop(self) -> None:
        """Graceful drain: NOT_SERVING first, then let in-flight RPCs finish.

        Event streams and session watches end at once with UNAVAILABLE, so their
        consumers reconnect to a replica that is not draining instead of holding this
        one for the whole grace.
        """
        log.info("draining", extra={"grace_s": self.drain_seconds})
        metrics.SERVING.set(0)
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.drain_seconds)
        # A handler still unwinding after that (a stream whose client left) must finish
        # before the stores' pools close under it.
        await self.calls.finished(5.0)
        # The refresher sees `stopping` and ends its pass; cancel only a stuck one, as a
        # cancelled Redis call would strand its connection.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.refresher, 15)
        # Work that outlives its call (a send's outcome, a batch of script calls) ends
        # before the caller of stop closes the Redis client under it.
        await self.background.wait(15)
        await self.tokens.close()
        await self.event_log.close()
        await self.session_store.close()
        await self.wechat.close()
        if self.metrics_server is not None:
            # shutdown() blocks until the server thread notices (up to its 0.5 s poll).
            await asyncio.to_thread(self.metrics_server.close)
        log.info("stopped")


async def create_server(
    settings: Settings,
    redis_client: redis.Redis,
    *,
    listen: str | None = None,
    serve_metrics: bool = True,
    clock: Clock | None = None,
) -> CoreServer:
    """Build and start core on `listen` (default `[core] listen`; port 0 picks one)."""
    stopping = asyncio.Event()
    background = Background()
    calls = InFlightCalls()
    store = IngressStore(
        redis_client,
        dedup_ttl_seconds=settings.core.dedup_ttl_seconds,
        # A (timestamp, nonce) is acceptable for one window either side of its time.
        nonce_ttl_seconds=2 * settings.edge.timestamp_window_seconds + 60,
        event_retention=settings.core.event_retention,
        background=background,
    )
    clock = clock or SystemClock()
    wechat = WeChatClient(settings.wechat.api_base, clock)
    tokens = TokenService(
        settings.apps,
        wechat,
        CredentialStore(redis_client, "token"),
        CredentialStore(redis_client, "ticket:jsapi"),
        clock,
    )
    messages = MessageStore(
        redis_client,
        idempotency_ttl_seconds=settings.core.idempotency_ttl_seconds,
        record_ttl_seconds=settings.core.delivery_ttl_seconds,
        background=background,
    )
    messaging = MessagingService(
        settings.apps, messages, wechat, tokens, clock, background=background
    )
    ingress = IngressService(settings.apps, store, clock, results=messaging.results)
    event_log = EventLog(redis_client, retention=settings.core.event_retention)
    session_store = SessionStore(
        redis_client, event_retention=settings.core.session_event_retention
    )
    sessions = SessionService(settings.apps, session_store, clock, stopping=stopping)
    identity = IdentityDeps(
        settings.apps,
        wechat=wechat,
        tokens=tokens,
        sessions=sessions,
        store=IdentityStore(redis_client),
        vault=Vault(settings.vault.keys),
        clock=clock,
    )
    mini_programs = MiniProgramIdentity(identity)
    web_login = WebLogin(identity, open_base=settings.wechat.open_base)
    events = EventService(
        settings.apps,
        event_log,
        max_deliveries=settings.core.max_deliveries,
        stopping=stopping,
    )

    server = grpc.aio.server(
        interceptors=default_interceptors(settings.callers, calls),
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)],
    )
    ingress_service_pb2_grpc.add_IngressServiceServicer_to_server(
        IngressServicer(ingress, stopping), server
    )
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(events), server)
    token_service_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(tokens), server)
    messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(
        MessagingServicer(messaging), server
    )
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(sessions), server)
    oauth_service_pb2_grpc.add_OAuthServiceServicer_to_server(
        OAuthServicer(web_login, mini_programs), server
    )

    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *API_SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    port = server.add_insecure_port(listen or settings.core.listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen or settings.core.listen}")
    # Bound before the gRPC server starts, so a taken metrics port leaves nothing running.
    metrics_server = MetricsServer(settings.core.metrics_listen) if serve_metrics else None
    await server.start()
    for name in ("", *API_SERVICES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics.SERVING.set(1)
    log.info(
        "core serving",
        extra={"port": port, "metrics_port": metrics_server.port if metrics_server else None},
    )
    refresher = asyncio.create_task(_keep_fresh(tokens, stopping), name="token-refresher")
    return CoreServer(
        server,
        port,
        health,
        metrics_server,
        settings.core.drain_seconds,
        stopping,
        event_log,
        session_store,
        wechat,
        tokens,
        refresher,
        background,
        calls,
    )


async def _keep_fresh(tokens: TokenService, stopping: asyncio.Event) -> None:
    """Refresh tokens and tickets ahead of expiry even when nobody asks for them."""
    while not stopping.is_set():
        try:
            await tokens.keep_fresh()
        except Exception:  # a failed round is logged; the next one tries again
            log.exception("background token refresh failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), REFRESH_INTERVAL)

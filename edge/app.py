"""The edge's composition root: `make_app` wires config, crypto, core client and spool."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web

from edge import metrics
from edge.core_client import CoreClient
from edge.errors import NoRoute
from edge.handlers import (
    CallbackDeps,
    CallbackHandler,
    EdgeHandler,
    HealthHandler,
    InFlight,
    MetricsHandler,
)
from edge.oauth import OAuthCallbackHandler, OAuthDeps, OAuthStartHandler
from edge.replayer import Replayer
from edge.spool import Spool
from wxplatform.clock import Clock, SystemClock
from wxplatform.config import Settings, split_address
from wxplatform.wechat.crypto import MessageCrypto

__all__ = ["EdgeServer", "make_app", "start_edge"]

log = logging.getLogger("wxplatform.edge")

# Tornado's own request-size limit stays out of the way: the callback handler enforces
# the configured cap itself and answers 413 (Tornado would answer a bare 400).
_TORNADO_BODY_LIMIT = 1 << 30


def make_app(
    settings: Settings, deps: CallbackDeps, *, metrics_dir: str | None = None
) -> tornado.web.Application:
    """The Tornado application for `settings`.

    `metrics_dir`: the directory the worker processes of one edge keep their metrics
    in (`PROMETHEUS_MULTIPROC_DIR`); `/metrics` then answers for all of them.
    """
    web = OAuthDeps(settings.apps, deps.core, deps.clock)
    return tornado.web.Application(
        [
            (r"/wx/(?P<app_id>[^/]+)", CallbackHandler, {"deps": deps}),
            (r"/oauth/(?P<app_id>[^/]+)/start", OAuthStartHandler, {"deps": web}),
            (r"/oauth/(?P<app_id>[^/]+)/callback", OAuthCallbackHandler, {"deps": web}),
            (r"/healthz", HealthHandler),
            (r"/metrics", MetricsHandler, {"registry": metrics.registry(metrics_dir)}),
        ],
        default_handler_class=_NotFound,
        compress_response=False,
        xsrf_cookies=False,
        # Handlers log one access line each, with the path only: query strings carry
        # signatures and openids, which do not belong in logs.
        log_function=lambda handler: None,
    )


def message_cryptos(settings: Settings) -> dict[str, MessageCrypto]:
    """One `MessageCrypto` per app that has an EncodingAESKey."""
    return {
        app.app_id: MessageCrypto(
            app.app_id,
            app.encoding_aes_key.reveal(),
            app.previous_encoding_aes_key.reveal() if app.previous_encoding_aes_key else None,
        )
        for app in settings.apps.values()
        if app.encoding_aes_key is not None
    }


class _NotFound(EdgeHandler):
    """Any path no route serves: 404, counted, its body never read."""

    def route(self) -> None:
        raise NoRoute("no_route", self.request.path[:64])


@dataclass
class EdgeServer:
    """A started edge: HTTP server, bound port, core client, spool and its replayer."""

    http: tornado.httpserver.HTTPServer
    port: int
    deps: CallbackDeps

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting, let in-flight pushes finish, stop replaying, close everything.

        Keep-alive connections stay open for the pushes on them, but each answer from
        now on closes its connection, so clients move to another edge (or wait for this
        one's successor) instead of keeping this one busy.
        """
        self.deps.in_flight.draining = True
        self.http.stop()
        if not await self.deps.in_flight.drained(grace_seconds):
            log.warning("in-flight pushes did not finish within the grace period")
        await self.deps.replayer.stop()
        await self.http.close_all_connections()
        await self.deps.core.close()
        await self.deps.spool.close()


async def start_edge(
    settings: Settings,
    *,
    listen: str | None = None,
    clock: Clock | None = None,
    core: CoreClient | None = None,
    reuse_port: bool = False,
    metrics_dir: str | None = None,
) -> EdgeServer:
    """Build and start the edge on `listen` (default `[edge] listen`; port 0 picks one).

    `core` replaces the gRPC client to `[edge] core_target` (the benchmark's stub core).
    `reuse_port` lets the worker processes of one edge listen on the same port (the
    kernel spreads connections over them); `metrics_dir` see `make_app`.
    """
    edge = settings.edge
    clock = clock or SystemClock()
    core = core or CoreClient(edge.core_target, edge.core_credential)
    spool = Spool(Path(edge.spool_path), max_bytes=edge.spool_max_bytes)
    await spool.open()
    replayer = Replayer(spool, core, clock, max_age_seconds=edge.spool_max_age_seconds)
    deps = CallbackDeps(
        apps=settings.apps,
        cryptos=message_cryptos(settings),
        core=core,
        spool=spool,
        replayer=replayer,
        clock=clock,
        in_flight=InFlight(),
        budget_seconds=edge.budget_seconds,
        max_body_bytes=edge.max_body_bytes,
        timestamp_window_seconds=edge.timestamp_window_seconds,
    )
    host, port = split_address(listen or edge.listen)
    sockets = tornado.netutil.bind_sockets(port, address=host, reuse_port=reuse_port)
    http = tornado.httpserver.HTTPServer(
        make_app(settings, deps, metrics_dir=metrics_dir),
        max_body_size=_TORNADO_BODY_LIMIT,
        max_header_size=16 * 1024,
        # The body timeout is the callback handler's own timer (see `CallbackHandler`).
        idle_connection_timeout=60,
    )
    http.add_sockets(sockets)
    replayer.start()
    bound = int(sockets[0].getsockname()[1])
    log.info("edge serving", extra={"port": bound, "core": edge.core_target})
    return EdgeServer(http, bound, deps)

"""The edge's composition root: `make_app` wires config, crypto and the core client."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tornado.httpserver
import tornado.netutil
import tornado.web

from edge.core_client import CoreClient
from edge.handlers import CallbackHandler, HealthHandler, InFlight, MetricsHandler
from wxplatform.clock import Clock, SystemClock
from wxplatform.config import Settings
from wxplatform.wechat.crypto import MessageCrypto

__all__ = ["EdgeServer", "make_app", "start_edge"]

log = logging.getLogger("wxplatform.edge")


def make_app(
    settings: Settings,
    core: CoreClient,
    *,
    clock: Clock | None = None,
    in_flight: InFlight | None = None,
) -> tornado.web.Application:
    """The Tornado application for `settings`, delivering to `core`."""
    cryptos = {
        app.app_id: MessageCrypto(
            app.app_id,
            app.encoding_aes_key.reveal(),
            app.previous_encoding_aes_key.reveal() if app.previous_encoding_aes_key else None,
        )
        for app in settings.apps.values()
        if app.encoding_aes_key is not None
    }
    callback = {
        "apps": settings.apps,
        "cryptos": cryptos,
        "core": core,
        "clock": clock or SystemClock(),
        "budget_seconds": settings.edge.budget_seconds,
        "in_flight": in_flight or InFlight(),
    }
    return tornado.web.Application(
        [
            (r"/wx/(?P<app_id>[^/]+)", CallbackHandler, callback),
            (r"/healthz", HealthHandler),
            (r"/metrics", MetricsHandler),
        ],
        default_handler_class=_NotFound,
        compress_response=False,
        xsrf_cookies=False,
    )


class _NotFound(HealthHandler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404)


@dataclass
class EdgeServer:
    """A started edge: its HTTP server, bound port and core client."""

    http: tornado.httpserver.HTTPServer
    port: int
    core: CoreClient

    in_flight: InFlight

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting, let in-flight pushes finish, then close the core channel."""
        self.http.stop()
        if not await self.in_flight.drained(grace_seconds):
            log.warning("in-flight pushes did not finish within the grace period")
        await self.http.close_all_connections()
        await self.core.close()


async def start_edge(
    settings: Settings, *, listen: str | None = None, clock: Clock | None = None
) -> EdgeServer:
    """Build and start the edge on `listen` (default `[edge] listen`; port 0 picks one)."""
    core = CoreClient(settings.edge.core_target, settings.edge.core_credential)
    in_flight = InFlight()
    app = make_app(settings, core, clock=clock, in_flight=in_flight)
    host, _, port = (listen or settings.edge.listen).rpartition(":")
    sockets = tornado.netutil.bind_sockets(int(port), address=host)
    http = tornado.httpserver.HTTPServer(
        app, max_body_size=settings.edge.max_body_bytes, idle_connection_timeout=60
    )
    http.add_sockets(sockets)
    bound = int(sockets[0].getsockname()[1])
    log.info("edge serving", extra={"port": bound, "core": settings.edge.core_target})
    return EdgeServer(http, bound, core, in_flight)

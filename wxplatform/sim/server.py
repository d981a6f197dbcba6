"""`WeChatSimulator`: a real HTTP server that behaves like WeChat's API, plus its controls.

Run it in-process (tests: `async with WeChatSimulator(apps, ManualClock()) as sim`) or
from the CLI. The Python control methods here mirror the `/_sim/` HTTP control API, so
a test can use either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from wxplatform.clock import Clock, ManualClock, SystemClock
from wxplatform.config import AppConfig
from wxplatform.sim.api import NotFoundHandler, api_routes
from wxplatform.sim.control import DEFAULT_OPENID, control_routes
from wxplatform.sim.faults import Fault
from wxplatform.sim.messages import original_id, text_message
from wxplatform.sim.push import PushResult, push
from wxplatform.sim.state import SimState
from wxplatform.sim.tickets import TicketStore
from wxplatform.sim.tokens import TokenPolicy, TokenStore

__all__ = ["ClockNotAdjustable", "WeChatSimulator"]

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()


class ClockNotAdjustable(RuntimeError):
    """The simulator runs on a real clock, which cannot be advanced."""


def _log_request(handler: RequestHandler) -> None:
    # Tornado's default access log prints the full URI, and /cgi-bin/token carries the
    # AppSecret in its query string: log the path only.
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    request = handler.request
    log.log(
        level,
        "%d %s %s %.1fms",
        status,
        request.method,
        request.path,
        1000 * request.request_time(),
    )


class WeChatSimulator:
    """A simulated WeChat for a fixed set of apps, on an injectable clock."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        clock: Clock = _SYSTEM_CLOCK,
        *,
        policy: TokenPolicy | None = None,
    ) -> None:
        self.apps: dict[str, AppConfig] = dict(apps)
        self.clock = clock
        self.state = SimState(
            self.apps, clock, TokenStore(self.apps, clock, policy), TicketStore(self.apps, clock)
        )
        self._server: HTTPServer | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # -- serving -----------------------------------------------------------------------

    def make_app(self) -> Application:
        """The Tornado application: WeChat's API plus the `/_sim/` control API."""
        return Application(
            [*api_routes(self.state), *control_routes(self)],
            default_handler_class=NotFoundHandler,
            default_handler_args={"state": self.state},
            log_function=_log_request,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host:port` (0 = any free port) and return the port bound."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        sockets = bind_sockets(port, address=host)
        server = HTTPServer(self.make_app())
        server.add_sockets(sockets)
        self._server = server
        self._host = host
        self._port = int(sockets[0].getsockname()[1])
        log.info("WeChat simulator listening on %s (%d apps)", self.base_url, len(self.apps))
        return self._port

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        await server.close_all_connections()
        self._port = None

    async def __aenter__(self) -> WeChatSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port bound by `start`."""
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """Where clients reach the simulator, e.g. `http://127.0.0.1:8181`."""
        host = self._host
        if host in ("", "0.0.0.0"):  # noqa: S104 - mapping a wildcard to loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # -- control (mirrors /_sim/) --------------------------------------------------------

    def add_fault(
        self,
        path: str | None,
        *,
        errcode: int | None = None,
        errmsg: str | None = None,
        times: int = 1,
        latency_ms: float = 0,
        http_status: int = 200,
        body: str | None = None,
        content_type: str | None = None,
    ) -> Fault:
        """Inject a fault for the next `times` requests to `path` (None = any API path)."""
        fault = Fault(
            path=path,
            errcode=errcode,
            errmsg=errmsg,
            times=times,
            latency_ms=latency_ms,
            http_status=http_status,
            body=body,
            content_type=content_type,
        )
        self.state.faults.add(fault)
        return fault

    def faults(self) -> list[dict[str, Any]]:
        """The active faults."""
        return self.state.faults.to_json()

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.state.faults.clear()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Received API requests (secrets redacted), optionally only for `path`."""
        return self.state.requests.entries(path)

    def clear_requests(self) -> None:
        """Forget received requests."""
        self.state.requests.clear()

    @property
    def clock_is_manual(self) -> bool:
        """Whether `advance_clock` works."""
        return isinstance(self.clock, ManualClock)

    def advance_clock(self, seconds: float) -> float:
        """Move the ManualClock forward and return the new time."""
        if not isinstance(self.clock, ManualClock):
            raise ClockNotAdjustable("the simulator runs on the real clock")
        self.clock.advance(seconds)
        return self.clock.now()

    def stats(self) -> dict[str, Any]:
        """Tokens issued per app and endpoint, and today's quota use."""
        apps = self.state.tokens.stats()
        for app_id, counts in self.state.tickets.stats().items():
            apps.setdefault(app_id, {}).update(counts)
        return {"apps": apps}

    async def push(
        self,
        app_id: str,
        edge_url: str,
        fields: Mapping[str, Any],
        *,
        timeout: float = 5.0,
        max_retries: int = 3,
        nonce: str | None = None,
        key_index: int = 0,
    ) -> PushResult:
        """Push a callback for one of the simulator's apps, on the simulator's clock."""
        app = self.apps.get(app_id)
        if app is None:
            raise KeyError(f"unknown app {app_id!r}")
        return await push(
            app,
            edge_url,
            fields,
            clock=self.clock,
            timeout=timeout,
            max_retries=max_retries,
            nonce=nonce,
            key_index=key_index,
        )

    async def push_text(
        self, app_id: str, edge_url: str, text: str, *, openid: str = DEFAULT_OPENID
    ) -> PushResult:
        """Push a user's text message to an edge."""
        fields = text_message(original_id(app_id), openid, text, create_time=int(self.clock.now()))
        return await self.push(app_id, edge_url, fields)

"""The simulated WeChat HTTP API (`/cgi-bin/...`) and the handler base later endpoints use.

`ApiHandler` records each request (redacted), applies injected faults, and turns an
`ApiError` raised anywhere in a handler into WeChat's error body. `requires_access_token`
guards an endpoint with WeChat's token check and hands the handler the `Caller`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler

from wxplatform.sim.errors import ApiError, error_body
from wxplatform.sim.faults import Fault, gateway_page
from wxplatform.sim.state import SimState
from wxplatform.sim.tokens import Caller

__all__ = [
    "JSON_CONTENT_TYPE",
    "ApiHandler",
    "CallbackIpHandler",
    "NotFoundHandler",
    "StableTokenHandler",
    "TicketHandler",
    "TokenHandler",
    "requires_access_token",
]

log = logging.getLogger(__name__)

# WeChat really labels its JSON this way ("encoding", not "charset"); clients must cope.
JSON_CONTENT_TYPE = "application/json; encoding=utf-8"

# What /cgi-bin/getcallbackip returns: the ranges WeChat pushes from (sample values).
CALLBACK_IPS = ("101.226.103.0/25", "101.226.62.0/26", "101.89.15.0/26", "183.3.234.0/26")


class ApiHandler(RequestHandler):
    """Base of every simulated WeChat endpoint."""

    state: SimState

    def initialize(self, state: SimState) -> None:
        """Tornado hook: receive the simulator's shared state."""
        self.state = state

    async def prepare(self) -> None:
        """Record the request, then apply the first matching injected fault, if any."""
        request = self.request
        if request.path.startswith("/_sim/"):
            return  # an unknown control path: not WeChat traffic
        query = {
            k: [v.decode("utf-8", errors="replace") for v in values]
            for k, values in request.query_arguments.items()
        }
        self.state.requests.record(
            method=request.method or "",
            path=request.path,
            query=query,
            body=request.body,
            content_type=request.headers.get("Content-Type"),
            time=self.state.clock.now(),
        )
        fault = self.state.faults.take(request.path)
        if fault is None:
            return
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.reset:
            # Drop the connection with the request read and no answer sent.
            cast(HTTP1Connection, request.connection).stream.close()
            self.finish()  # tornado notices the closed stream and writes nothing
        elif fault.responds:
            self._answer_with(fault)

    def _answer_with(self, fault: Fault) -> None:
        self.set_status(fault.http_status)
        if fault.body is not None:
            self.set_header("Content-Type", fault.content_type or "text/plain; charset=utf-8")
            self.finish(fault.body.encode())
        elif fault.errcode is not None:
            self.send_json(error_body(fault.errcode, fault.errmsg))
        else:
            self.set_header("Content-Type", fault.content_type or "text/html")
            self.finish(gateway_page(fault.http_status).encode())

    def send_json(self, body: Mapping[str, Any]) -> None:
        """Finish with a JSON body in WeChat's style: raw UTF-8, no `\\uXXXX` escapes."""
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; anything else is 47001 "data format error"."""
        try:
            value = json.loads(self.request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(47001) from None
        if not isinstance(value, dict):
            raise ApiError(47001)
        return value

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """An `ApiError` becomes WeChat's HTTP 200 error body; anything else stays HTTP."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.set_status(200)
            self.send_json(error_body(exc.errcode, exc.errmsg))
            return
        super().write_error(status_code, **kwargs)

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Log handler failures by path only; an `ApiError` is an answer, not a failure.

        Tornado's own version prints the full URI and headers, and `/cgi-bin/token`
        carries the AppSecret in its query string.
        """
        if isinstance(value, ApiError | HTTPError):
            return  # the access log already shows the status
        log.error(
            "simulator handler failed: %s %s",
            self.request.method,
            self.request.path,
            exc_info=(typ, value, tb) if typ is not None and value is not None else None,
        )


H = TypeVar("H", bound=ApiHandler)
P = ParamSpec("P")


def requires_access_token(
    method: Callable[Concatenate[H, Caller, P], Awaitable[None]],
) -> Callable[Concatenate[H, P], Coroutine[Any, Any, None]]:
    """Guard a handler method with WeChat's `?access_token=` check.

    Missing → 41001, unknown → 40014, superseded after the overlap → 40001, expired →
    42001. On success the method is called with the token's `Caller` after `self`.
    """

    @functools.wraps(method)
    async def checked(self: H, /, *args: P.args, **kwargs: P.kwargs) -> None:
        caller = self.state.tokens.check(self.get_query_argument("access_token", "") or "")
        await method(self, caller, *args, **kwargs)

    return checked


class TokenHandler(ApiHandler):
    """`GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`."""

    async def get(self) -> None:
        """Issue a new token (docs/wechat.md §5.1)."""
        arg = self.get_query_argument
        if arg("grant_type", "") != "client_credential":
            raise ApiError(40002)
        app = self.state.tokens.authenticate(arg("appid", "") or "", arg("secret", "") or "")
        self.send_json(self.state.tokens.issue(app.app_id).body())


class StableTokenHandler(ApiHandler):
    """`POST /cgi-bin/stable_token` with a JSON body."""

    async def post(self) -> None:
        """Return the stable token, rolling or force-refreshing it (docs/wechat.md §5.1)."""
        data = self.json_body()
        if data.get("grant_type") != "client_credential":
            raise ApiError(40002)
        appid, secret = data.get("appid", ""), data.get("secret", "")
        force = data.get("force_refresh", False)
        if not isinstance(appid, str) or not isinstance(secret, str):
            raise ApiError(47001)
        if not isinstance(force, bool):
            raise ApiError(47001)
        app = self.state.tokens.authenticate(appid, secret)
        self.send_json(self.state.tokens.stable(app.app_id, force=force).body())


class CallbackIpHandler(ApiHandler):
    """`GET /cgi-bin/getcallbackip?access_token=`: the simplest token-guarded endpoint."""

    @requires_access_token
    async def get(self, caller: Caller) -> None:
        """The address ranges WeChat pushes callbacks from."""
        self.send_json({"ip_list": list(CALLBACK_IPS)})


class TicketHandler(ApiHandler):
    """`GET /cgi-bin/ticket/getticket?access_token=&type=jsapi`: the JS-SDK ticket."""

    @requires_access_token
    async def get(self, caller: Caller) -> None:
        """The app's current ticket of the requested type."""
        ticket, expires_in = self.state.tickets.get(
            caller.app_id, self.get_argument("type", "jsapi")
        )
        self.send_json({"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": expires_in})


class NotFoundHandler(ApiHandler):
    """Any path the simulator does not implement: recorded, then HTTP 404."""

    def _missing(self, *args: str, **kwargs: str) -> None:
        raise HTTPError(404)

    get = post = put = delete = patch = head = options = _missing

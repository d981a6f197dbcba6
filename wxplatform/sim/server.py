"""`WeChatSimulator`: a real HTTP server that behaves like WeChat's API, plus its controls.

Run it in-process (tests: `async with WeChatSimulator(apps, ManualClock()) as sim`) or
from the CLI. The Python control methods here mirror the `/_sim/` HTTP control API, so
a test can use either. Pushes made through the simulator (`push`, `/_sim/push`) teach
it who the users are and what they did; the send endpoints answer from that.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import msgspec
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from wxplatform.clock import Clock, ManualClock, SystemClock
from wxplatform.config import AppConfig, Secret
from wxplatform.sim.api import (
    ApiHandler,
    CallbackIpHandler,
    NotFoundHandler,
    StableTokenHandler,
    TicketHandler,
    TokenHandler,
)
from wxplatform.sim.callbacks import DEFAULT_CALLBACK_DELAY, CallbackQueue, CallbackRecord
from wxplatform.sim.control import DEFAULT_OPENID, control_routes
from wxplatform.sim.control_identity import identity_control_routes
from wxplatform.sim.control_messaging import messaging_control_routes
from wxplatform.sim.custom import CustomSendHandler
from wxplatform.sim.errors import CallbackAlreadySent, ClockNotAdjustable
from wxplatform.sim.faults import Fault
from wxplatform.sim.logins import LoginBook, UserData
from wxplatform.sim.messages import original_id, text_message
from wxplatform.sim.mini_program import Code2SessionHandler, PhoneNumberHandler
from wxplatform.sim.oauth import OAuthBook
from wxplatform.sim.oauth_pages import (
    AuthorizePageHandler,
    SnsAccessTokenHandler,
    SnsAuthHandler,
    SnsRefreshTokenHandler,
    SnsUserInfoHandler,
    UserInfoHandler,
)
from wxplatform.sim.outbox import JOB_STATUSES, ResultRule
from wxplatform.sim.push import PushResult, push
from wxplatform.sim.sends import BizSendHandler, SubscribeSendHandler, TemplateSendHandler
from wxplatform.sim.state import SimState
from wxplatform.sim.tickets import TicketStore
from wxplatform.sim.tokens import TokenPolicy, TokenStore

__all__ = ["WeChatSimulator"]

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()


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
    """A simulated WeChat for a fixed set of apps, on an injectable clock.

    `callback_urls` maps app ids to the edge base URL that result events
    (TEMPLATESENDJOBFINISH, subscribe_msg_sent_event) are pushed to, `callback_delay`
    seconds after the send; apps without a URL get no such pushes.
    """

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        clock: Clock = _SYSTEM_CLOCK,
        *,
        policy: TokenPolicy | None = None,
        callback_urls: Mapping[str, str] | None = None,
        callback_delay: float = DEFAULT_CALLBACK_DELAY,
    ) -> None:
        self.apps: dict[str, AppConfig] = dict(apps)
        self.clock = clock
        for app_id in callback_urls or {}:
            self._app(app_id)
        self.state = SimState(
            self.apps,
            clock,
            TokenStore(self.apps, clock, policy),
            TicketStore(self.apps, clock),
            CallbackQueue(self.push, callback_urls, callback_delay),
            LoginBook(self.apps, clock),
            OAuthBook(self.apps, clock),
        )
        self._server: HTTPServer | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # -- serving -----------------------------------------------------------------------

    def make_app(self) -> Application:
        """The Tornado application: WeChat's API plus the `/_sim/` control API."""
        return Application(
            [
                *_api_routes(self.state),
                *control_routes(self),
                *messaging_control_routes(self),
                *identity_control_routes(self),
            ],
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
        """Stop listening, cancel result events not yet pushed, close open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        await self.state.callbacks.close()
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
        reset: bool = False,
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
            reset=reset,
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
        """Push a callback for one of the simulator's apps, on the simulator's clock.

        When the edge answers HTTP 200 the push is recorded: the sender becomes a known
        user, and follows, windows and subscribe consent change as WeChat's would.
        """
        app = self._app(app_id)
        started = self.clock.now()
        result = await push(
            app,
            edge_url,
            fields,
            clock=self.clock,
            timeout=timeout,
            max_retries=max_retries,
            nonce=nonce,
            key_index=key_index,
        )
        if result.status == 200:
            self.state.audience.record_push(app, fields, started)
        return result

    async def push_text(
        self, app_id: str, edge_url: str, text: str, *, openid: str = DEFAULT_OPENID
    ) -> PushResult:
        """Push a user's text message to an edge."""
        fields = text_message(original_id(app_id), openid, text, create_time=int(self.clock.now()))
        return await self.push(app_id, edge_url, fields)

    # -- audience and messaging (mirrors /_sim/users, /templates, /consent, …) ----------

    def _app(self, app_id: str) -> AppConfig:
        app = self.apps.get(app_id)
        if app is None:
            raise KeyError(f"unknown app {app_id!r}")
        return app

    def reset_secret(self, app_id: str) -> str:
        """A new AppSecret for the app, as a reset in WeChat's console gives; returns it.

        Token requests with the old secret fail from now on; tokens already issued keep
        working until they expire.
        """
        secret = secrets.token_hex(16)
        self.apps[app_id] = msgspec.structs.replace(self._app(app_id), app_secret=Secret(secret))
        return secret

    def issued_secrets(self) -> set[str]:
        """The users' secrets this simulator handed out: session keys and OAuth tokens
        (for a test to check that none is stored anywhere in the clear)."""
        return self.state.logins.issued_keys() | self.state.oauth.issued_tokens()

    # -- web authorization -------------------------------------------------------------

    def set_profile(self, app_id: str, openid: str, **fields: Any) -> dict[str, Any]:
        """A user's WeChat profile (`nickname`, `head_image_url`, `unionid`, `snapshot`)."""
        self._app(app_id)
        return self.state.oauth.set_profile(app_id, openid, **fields).to_json()

    def set_browser_user(self, app_id: str, openid: str) -> None:
        """Who the consent page logs in as (a browser can still type another openid)."""
        self._app(app_id)
        self.state.oauth.set_browser_user(app_id, openid)

    # -- mini-program login ---------------------------------------------------------------

    def login_code(self, app_id: str, openid: str, unionid: str = "") -> str:
        """A `wx.login` code of a user of a mini program (single use, 5 minutes)."""
        return self.state.logins.login_code(app_id, openid, unionid)

    def phone_code(self, app_id: str, phone_number: str, country_code: str = "86") -> str:
        """A phone-number button's code for `phone_number` (single use, 5 minutes)."""
        return self.state.logins.phone_code(app_id, phone_number, country_code)

    def block_login(self, app_id: str, openid: str) -> None:
        """Make the user high-risk: `jscode2session` answers 40226 for them."""
        self.state.logins.block(app_id, openid)

    def user_data(self, app_id: str, openid: str, data: Mapping[str, Any]) -> UserData:
        """`encryptedData`, `iv`, `rawData` and `signature` of `data` for a logged-in user,
        made with the user's current session key exactly as WeChat makes them."""
        return self.state.logins.user_data(app_id, openid, data)

    def set_user(
        self,
        app_id: str,
        openid: str,
        *,
        follows: bool | None = None,
        blocked: bool | None = None,
        template_blocked: bool | None = None,
    ) -> dict[str, Any]:
        """Register or update a user; omitted flags keep their value (new users follow)."""
        self._app(app_id)
        user = self.state.audience.set_user(
            app_id, openid, follows=follows, blocked=blocked, template_blocked=template_blocked
        )
        return user.to_json()

    def users(self, app_id: str) -> list[dict[str, Any]]:
        """The users an app knows."""
        self._app(app_id)
        return [u.to_json() for u in self.state.audience.users(app_id)]

    def add_template(
        self,
        app_id: str,
        template_id: str,
        kind: str,
        keys: Mapping[str, str] | Sequence[str],
    ) -> dict[str, Any]:
        """Register a `template` (OA only) or `subscribe` template: `{key: type}` or names."""
        app = self._app(app_id)
        if kind == "template" and app.kind != "official_account":
            raise ValueError("template messages are for official accounts")
        return self.state.templates.add(app_id, template_id, kind, keys).to_json()

    def templates(self, app_id: str) -> list[dict[str, Any]]:
        """An app's registered templates."""
        self._app(app_id)
        return [t.to_json() for t in self.state.templates.all(app_id)]

    def grant_consent(self, app_id: str, openid: str, template_id: str, count: int = 1) -> int:
        """Add one-time subscribe acceptances; returns how many the user has left."""
        self._app(app_id)
        return self.state.audience.grant_consent(app_id, openid, template_id, count)

    def consent(self, app_id: str, openid: str) -> dict[str, int]:
        """Subscribe acceptances left per template id."""
        self._app(app_id)
        return self.state.audience.consent(app_id, openid)

    def windows(self, app_id: str, openid: str) -> list[dict[str, Any]]:
        """A user's customer-service windows, soonest expiry first, with `open` flags."""
        self._app(app_id)
        now = self.clock.now()
        return [w.to_json(now) for w in self.state.audience.user_windows(app_id, openid)]

    def sent(self, app_id: str | None = None) -> list[dict[str, Any]]:
        """Accepted sends, oldest first, optionally of one app."""
        return [m.to_json() for m in self.state.outbox.sent(app_id)]

    def clear_sent(self) -> None:
        """Forget the sent-message log."""
        self.state.outbox.clear()

    def set_callback_url(self, app_id: str, edge_url: str | None) -> None:
        """Where the app's result events go (`{edge_url}/wx/{app_id}`); None stops them."""
        self._app(app_id)
        self.state.callbacks.set_url(app_id, edge_url)

    def set_callback_delay(self, seconds: float) -> None:
        """How long after a send its result event is pushed."""
        self.state.callbacks.set_delay(seconds)

    def callback_settings(self) -> dict[str, Any]:
        """Callback URLs per app and the delay."""
        callbacks = self.state.callbacks
        return {"urls": dict(callbacks.urls), "delay": callbacks.delay}

    def force_template_result(
        self, app_id: str, status: str, *, openid: str | None = None, msgid: int | None = None
    ) -> None:
        """Force what a TEMPLATESENDJOBFINISH reports.

        With `msgid`: that send's pending job (`CallbackAlreadySent` once its event was
        built). Otherwise: the app's next template send, to `openid` if given.
        """
        self._app(app_id)
        if status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(map(repr, JOB_STATUSES))}")
        if msgid is None:
            self.state.outbox.add_rule(ResultRule(app_id, status, openid))
            return
        sent = self.state.outbox.find(msgid)
        if sent is None or sent.app_id != app_id or sent.job_status is None:
            raise KeyError(f"no template message with msgid {msgid}")
        if self.state.callbacks.fired(msgid):
            raise CallbackAlreadySent(f"the result event of msgid {msgid} was already sent")
        sent.job_status = status

    def result_rules(self) -> list[dict[str, Any]]:
        """Forced template results not used yet."""
        return [r.to_json() for r in self.state.outbox.rules()]

    def callback_results(self) -> list[CallbackRecord]:
        """Result events pushed so far (finished jobs), in the order they finished."""
        return self.state.callbacks.records()

    async def drain_callbacks(self) -> list[CallbackRecord]:
        """Wait for every pending result event to be pushed; all records so far."""
        return await self.state.callbacks.drain()


def _api_routes(state: SimState) -> list[tuple[str, type[ApiHandler], dict[str, Any]]]:
    """The URL table of the simulated API."""
    kwargs = {"state": state}
    return [
        (r"/cgi-bin/token", TokenHandler, kwargs),
        (r"/cgi-bin/stable_token", StableTokenHandler, kwargs),
        (r"/cgi-bin/getcallbackip", CallbackIpHandler, kwargs),
        (r"/cgi-bin/ticket/getticket", TicketHandler, kwargs),
        (r"/cgi-bin/message/template/send", TemplateSendHandler, kwargs),
        (r"/cgi-bin/message/custom/send", CustomSendHandler, kwargs),
        (r"/cgi-bin/message/subscribe/bizsend", BizSendHandler, kwargs),
        (r"/cgi-bin/message/subscribe/send", SubscribeSendHandler, kwargs),
        (r"/sns/jscode2session", Code2SessionHandler, kwargs),
        (r"/wxa/business/getuserphonenumber", PhoneNumberHandler, kwargs),
        (r"/connect/oauth2/authorize", AuthorizePageHandler, kwargs),
        (r"/connect/qrconnect", AuthorizePageHandler, kwargs),
        (r"/sns/oauth2/access_token", SnsAccessTokenHandler, kwargs),
        (r"/sns/oauth2/refresh_token", SnsRefreshTokenHandler, kwargs),
        (r"/sns/userinfo", SnsUserInfoHandler, kwargs),
        (r"/sns/auth", SnsAuthHandler, kwargs),
        (r"/cgi-bin/user/info", UserInfoHandler, kwargs),
    ]

"""The browser side of web login: `/oauth/{app_id}/start` and `/oauth/{app_id}/callback`.

`start` gives the browser a binding cookie (random; only its SHA-256 reaches core),
asks core for WeChat's authorize URL and redirects there. WeChat sends the browser back
to `callback` with a `code` and the `state`; the edge hands both to core with the
binding's hash (a state is accepted only from the browser that started its flow: an
attacker's state in a victim's browser fails), sets the platform session cookie and
redirects (303) to the return URL the flow was started with. Every failure is a small
HTML page with its own status, never a stack trace; every answer here forbids caching
and the Referer (the callback URL carries the code).
"""

from __future__ import annotations

import hashlib
import html
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from acme.wxplatform.v1 import oauth_service_pb2 as pb
from edge import metrics
from edge.core_client import CoreClient
from edge.errors import CoreRefused, CoreUnreachable, EdgeRejection, UnknownApp
from edge.handlers import EdgeHandler
from wxplatform.clock import Clock
from wxplatform.config import AppConfig

__all__ = ["OAuthCallbackHandler", "OAuthDeps", "OAuthStartHandler"]

log = logging.getLogger("wxplatform.edge.oauth")

_BINDING_SECONDS = 600  # the state's life at core
_SCOPES = {
    "": pb.AUTHORIZE_SCOPE_UNSPECIFIED,  # the app's default: base, or a website's login
    "base": pb.AUTHORIZE_SCOPE_BASE,
    "userinfo": pb.AUTHORIZE_SCOPE_USERINFO,
    "login": pb.AUTHORIZE_SCOPE_LOGIN,
}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}

# Core's reasons, as the person in front of the browser should read them.
_PAGES: dict[str, tuple[int, str]] = {
    "RETURN_URL_NOT_ALLOWED": (400, "This login link does not lead anywhere it may."),
    "INVALID_REQUEST": (400, "This login link is not valid."),
    "OAUTH_STATE_INVALID": (
        400,
        "This login has expired, was already used, or was started in another browser. "
        "Please start again.",
    ),
    "AUTH_CODE_INVALID": (400, "The WeChat login expired. Please start again."),
    "APP_NOT_FOUND": (404, "There is no such app."),
    "APP_KIND_MISMATCH": (404, "Web login is not available for this app."),
    "USER_LOGIN_BLOCKED": (403, "WeChat did not allow this login."),
}
_WECHAT_TROUBLE = (502, "WeChat did not answer in time. Please try again in a moment.")


class OAuthDeps:
    """What the web-login handlers need."""

    def __init__(self, apps: Mapping[str, AppConfig], core: CoreClient, clock: Clock) -> None:
        self.apps = apps
        self.core = core
        self.clock = clock


def binding_cookie(state: str) -> str:
    """The binding cookie of one flow (two tabs may log in at once)."""
    return f"wxpb_{state[:16]}"


class _OAuthHandler(EdgeHandler):
    def initialize(self, deps: OAuthDeps) -> None:
        self.deps = deps

    def prepare(self) -> None:
        super().prepare()
        for name, value in _SECURITY_HEADERS.items():
            self.set_header(name, value)

    def _app(self, app_id: str) -> AppConfig:
        app = self.deps.apps.get(app_id)
        if app is None or not app.oauth.public_base_url:
            raise UnknownApp("unknown_app")
        return app

    def page(self, status: int, message: str) -> None:
        """A small HTML page: the status and one sentence, nothing else."""
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html><head><meta charset=utf-8><title>Login</title></head>"
            f"<body><p>{html.escape(message)}</p></body></html>"
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        for name, value in _SECURITY_HEADERS.items():
            self.set_header(name, value)
        if isinstance(exc, EdgeRejection):
            metrics.REJECTED.labels(exc.reason).inc()
        if isinstance(exc, CoreRefused):
            status, message = _PAGES.get(exc.reason, _WECHAT_TROUBLE)
            log.info("web login refused", extra={"reason": exc.reason, "status": status})
            self.page(status, message)
        elif isinstance(exc, CoreUnreachable):
            log.warning("web login: core unreachable", extra={"reason": exc.reason})
            self.page(503, "The service is briefly unavailable. Please try again in a moment.")
        elif isinstance(exc, EdgeRejection):
            self.page(exc.status, "This login link is not valid.")
        else:
            self.page(status_code, "Something went wrong. Please try again.")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, EdgeRejection):
            return  # answered with its page; write_error logged it
        super().log_exception(typ, value, tb)


class OAuthStartHandler(_OAuthHandler):
    """`GET /oauth/{app_id}/start?return_url=…&scope=base|userinfo|login` (a website app's
    only scope, and its default, is `login`: WeChat's QR-code page)."""

    async def get(self, app_id: str) -> None:
        app = self._app(app_id)
        scope = _SCOPES.get(self.get_query_argument("scope", "") or "")
        return_url = self.get_query_argument("return_url", "") or ""
        if scope is None or not return_url:
            self.page(400, "This login link is not valid.")
            return
        binding = secrets.token_urlsafe(32)
        built = await self.deps.core.build_authorize_url(
            pb.BuildAuthorizeUrlRequest(
                app_id=app.app_id,
                scope=scope,
                return_url=return_url,
                browser_binding=hashlib.sha256(binding.encode()).hexdigest(),
            ),
            request_id=self.request_id,
        )
        self.set_cookie(
            binding_cookie(built.state),
            binding,
            path=f"/oauth/{app.app_id}/",
            max_age=_BINDING_SECONDS,
            httponly=True,
            secure=app.oauth.cookie_secure,
            samesite="Lax",
        )
        self.redirect(built.authorize_url, status=302)


class OAuthCallbackHandler(_OAuthHandler):
    """`GET /oauth/{app_id}/callback?code=…&state=…` (no code: the user refused)."""

    async def get(self, app_id: str) -> None:
        app = self._app(app_id)
        state = self.get_query_argument("state", "") or ""
        code = self.get_query_argument("code", "") or ""
        if not state.isascii() or not state.isalnum():
            self.page(400, "This login link is not valid.")
            return
        if not code:
            self.page(403, "You did not allow the login. Close this page or start again.")
            return
        binding = self.get_cookie(binding_cookie(state)) or ""
        identity = await self.deps.core.exchange_code(
            pb.ExchangeCodeRequest(
                app_id=app.app_id,
                code=code,
                state=state,
                browser_binding=hashlib.sha256(binding.encode()).hexdigest() if binding else "",
            ),
            request_id=self.request_id,
        )
        if identity.snapshot_user:
            self.page(
                403,
                "This page was opened as a preview. Open it in WeChat and allow the login "
                "to continue.",
            )
            return
        expires = identity.session.expire_time.seconds
        self.set_cookie(
            app.oauth.cookie_name,
            identity.session_token,
            domain=app.oauth.cookie_domain or None,
            path=app.oauth.cookie_path,
            max_age=max(int(expires - self.deps.clock.now()), 1),
            httponly=True,
            secure=app.oauth.cookie_secure,
            samesite="Lax",
        )
        self.redirect(identity.return_url, status=303)

"""The web-authorization side of the simulated WeChat: the consent page and `sns/*` APIs.

`GET /connect/oauth2/authorize` is what a browser is sent to. For `snsapi_base` WeChat
answers silently with a redirect; for `snsapi_userinfo` it shows a consent page, here a
small HTML form with the simulated user's openid and Allow / Deny buttons. Allow
redirects to `redirect_uri?code=…&state=…`, Deny to `redirect_uri?state=…` (no code).
"""

from __future__ import annotations

import hmac
import html
import re
import urllib.parse

from wxplatform.sim.api import ApiHandler, requires_access_token
from wxplatform.sim.errors import ApiError
from wxplatform.sim.tokens import Caller

__all__ = [
    "AuthorizePageHandler",
    "SnsAccessTokenHandler",
    "SnsAuthHandler",
    "SnsRefreshTokenHandler",
    "SnsUserInfoHandler",
    "UserInfoHandler",
]

# Per page: the kind of app it serves and the scopes it takes.
_PAGES = {
    "/connect/oauth2/authorize": ("official_account", ("snsapi_base", "snsapi_userinfo")),
    "/connect/qrconnect": ("website", ("snsapi_login",)),
}
_STATE = re.compile(r"[A-Za-z0-9]{0,128}")
_OPENID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = "&".join(p for p in (parts.query, urllib.parse.urlencode(params)) if p)
    return urllib.parse.urlunsplit(parts._replace(query=query))


class AuthorizePageHandler(ApiHandler):
    """`GET` the consent page (or the silent redirect); `POST` the user's decision."""

    def _flow(self) -> tuple[str, str, str, str]:
        arg = self.get_argument
        appid, redirect = arg("appid", ""), arg("redirect_uri", "")
        scope, state = arg("scope", ""), arg("state", "")
        kind, scopes = _PAGES[self.request.path]
        app = self.state.apps.get(appid)
        if app is None or app.kind != kind:
            self._page(400, f"There is no such {kind.replace('_', ' ')} (appid).")
        elif arg("response_type", "") != "code" or scope not in scopes:
            self._page(400, "Bad response_type or scope.")
        elif not _STATE.fullmatch(state):
            self._page(400, "state must be at most 128 of [A-Za-z0-9].")
        elif urllib.parse.urlsplit(redirect).scheme not in ("http", "https"):
            self._page(400, "redirect_uri is not an http(s) URL.")
        else:
            return appid, redirect, scope, state
        raise _Answered

    def _page(self, status: int, body: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!doctype html><title>WeChat</title><p>{html.escape(body)}</p>")

    async def get(self) -> None:
        try:
            appid, redirect, scope, state = self._flow()
        except _Answered:
            return
        oauth = self.state.oauth
        openid = oauth.browser_user(appid)
        if scope == "snsapi_base" and self.get_argument("forcePopup", "") != "true":
            self.redirect(
                _with_query(redirect, code=oauth.grant(appid, openid, scope), state=state)
            )
            return
        fields = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
            for name, value in (
                ("appid", appid),
                ("redirect_uri", redirect),
                ("response_type", "code"),
                ("scope", scope),
                ("state", state),
            )
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html><head><title>WeChat authorization</title></head><body>"
            f"<h1>{html.escape(appid)} asks for your WeChat profile</h1>"
            + (
                "<p>Scan this code with WeChat, then confirm on the phone.</p>"
                if scope == "snsapi_login"
                else ""
            )
            + f'<form method="post" action="{self.request.path}">'
            f"{fields}"
            '<label>Log in as <input id="openid" name="openid" '
            f'value="{html.escape(openid)}"></label>'
            '<button id="allow" name="decision" value="allow">Allow</button>'
            '<button id="deny" name="decision" value="deny">Deny</button>'
            "</form></body></html>"
        )

    async def post(self) -> None:
        try:
            appid, redirect, scope, state = self._flow()
        except _Answered:
            return
        if self.get_body_argument("decision", "") != "allow":
            self.redirect(_with_query(redirect, state=state))
            return
        openid = self.get_body_argument("openid", "")
        if not _OPENID.fullmatch(openid):
            self._page(400, "openid must be 1-128 of [A-Za-z0-9_-].")
            return
        self.state.oauth.set_profile(appid, openid)
        code = self.state.oauth.grant(appid, openid, scope)
        self.redirect(_with_query(redirect, code=code, state=state))


class _Answered(Exception):
    """The handler has already answered the request."""


class SnsAccessTokenHandler(ApiHandler):
    """`GET /sns/oauth2/access_token?appid=&secret=&code=&grant_type=authorization_code`."""

    async def get(self) -> None:
        arg = self.get_query_argument
        if arg("grant_type", "") != "authorization_code":
            raise ApiError(40002)
        appid = arg("appid", "") or ""
        app = self.state.apps.get(appid)
        if app is None:
            raise ApiError(40013)
        secret = arg("secret", "") or ""
        if not hmac.compare_digest(secret.encode(), app.app_secret.reveal().encode()):
            raise ApiError(40125)
        code = arg("code", "") or ""
        if not code:
            raise ApiError(41008)
        self.send_json(self.state.oauth.exchange(appid, code))


class SnsRefreshTokenHandler(ApiHandler):
    """`GET /sns/oauth2/refresh_token?appid=&grant_type=refresh_token&refresh_token=`."""

    async def get(self) -> None:
        arg = self.get_query_argument
        if arg("grant_type", "") != "refresh_token":
            raise ApiError(40002)
        appid = arg("appid", "") or ""
        if appid not in self.state.apps:
            raise ApiError(40013)
        self.send_json(self.state.oauth.refresh(appid, arg("refresh_token", "") or ""))


class SnsUserInfoHandler(ApiHandler):
    """`GET /sns/userinfo?access_token=&openid=&lang=` with a user access token."""

    async def get(self) -> None:
        arg = self.get_query_argument
        token, openid = arg("access_token", "") or "", arg("openid", "") or ""
        if not token:
            raise ApiError(41001)
        self.send_json(self.state.oauth.user_info(token, openid))


class SnsAuthHandler(ApiHandler):
    """`GET /sns/auth?access_token=&openid=`: is a user access token valid."""

    async def get(self) -> None:
        arg = self.get_query_argument
        self.state.oauth.check(arg("access_token", "") or "", arg("openid", "") or "")
        self.send_json({"errcode": 0, "errmsg": "ok"})


class UserInfoHandler(ApiHandler):
    """`GET /cgi-bin/user/info?access_token=&openid=&lang=` with the app's token."""

    @requires_access_token
    async def get(self, caller: Caller) -> None:
        openid = self.get_query_argument("openid", "") or ""
        if not _OPENID.fullmatch(openid):
            raise ApiError(40003)
        user = self.state.audience.user(caller.app_id, openid)
        if user is None or not user.follows:
            self.send_json({"subscribe": 0, "openid": openid})
            return
        profile = self.state.oauth.profile(caller.app_id, openid)
        body = {
            "subscribe": 1,
            "openid": openid,
            "nickname": profile.nickname,
            "headimgurl": profile.head_image_url,
            "subscribe_time": int(self.state.clock.now()),
            "language": "zh_CN",
        }
        if profile.unionid:
            body["unionid"] = profile.unionid
        self.send_json(body)

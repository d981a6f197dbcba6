"""Web login through WeChat for an official account's pages (OAuth 2, docs/wechat.md §5.5).

`build_authorize_url` issues a `state` (random, `[A-Za-z0-9]`, bound to the browser that
starts the flow through the hash of a value only that browser holds) and the authorize
URL WeChat expects, whose redirect is the edge's callback. `exchange_code` checks the
state before anything reaches WeChat (app, expiry, single use, the same browser), trades
the code for the user's identity and tokens, keeps the tokens sealed, fetches the
profile for `snsapi_userinfo`, and creates a platform session. A repeat of the same code
and state from the same browser (a reload of the callback) gets a session for the same
user without a second call to WeChat, which would refuse the spent code (40163).
`user_info` answers from `cgi-bin/user/info` for followers and from the stored OAuth
profile otherwise, refreshing it with the user's tokens when stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import string
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wxplatform.config import AppConfig
from wxplatform.core.adapters.wechat_client import Call
from wxplatform.core.services.checks import Checks
from wxplatform.core.services.identity import IdentityDeps
from wxplatform.core.services.sessions import NewSession
from wxplatform.core.services.vault import VaultError
from wxplatform.errors import (
    AppKindMismatch,
    OAuthStateInvalid,
    ReturnUrlNotAllowed,
    UserAuthorizationRequired,
    WeChatBadResponse,
    WeChatRefused,
    WeChatUnavailable,
)

__all__ = ["AuthorizeUrl", "Profile", "WebIdentity", "WebLogin", "return_url_allowed"]

SCOPES = ("snsapi_base", "snsapi_userinfo")  # an official account's
WEBSITE_SCOPE = "snsapi_login"  # a website app's QR-code login
_PROFILE_SCOPES = ("snsapi_userinfo", "snsapi_login")
STATE_SECONDS = 600
CODE_SECONDS = 300  # a code is spent within this at WeChat: reloads are answered that long
TOKEN_RECORD_SECONDS = 30 * 86400  # the refresh token's life
PROFILE_FRESH_SECONDS = 3600
_STATE_LENGTH = 32  # of [A-Za-z0-9]: 190 bits
_STATE = re.compile(r"[A-Za-z0-9]{1,128}")
_BINDING = re.compile(r"[0-9a-f]{64}")
_OPENID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_WAIT_FOR_FIRST = 3.0  # a reload arriving while the first request still exchanges
_LANGS = ("zh_CN", "zh_TW", "en")
# Encoded forms of `.`, `/` and `\` in a path could turn a matching prefix into another
# path once a server decodes them.
_ENCODED_SEPARATORS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


@dataclass(frozen=True)
class AuthorizeUrl:
    """Where to send the browser, and the flow's state."""

    url: str
    state: str
    expires_at: float


@dataclass(frozen=True)
class WebIdentity:
    """What a completed web login gives: the user, and a session unless a snapshot user."""

    openid: str
    unionid: str
    scope: str
    snapshot_user: bool
    return_url: str
    created: NewSession | None


@dataclass(frozen=True)
class Profile:
    """A user's WeChat profile."""

    openid: str
    nickname: str
    head_image_url: str
    unionid: str
    privileges: tuple[str, ...]


def return_url_allowed(url: str, prefixes: Sequence[str]) -> bool:
    """Whether `url` lies under one of `prefixes`: the same scheme, host and port, and a
    path that starts with the prefix's at a `/` boundary. Anything ambiguous fails:
    credentials in the URL, backslashes, controls, non-ASCII, dot segments and their
    encoded forms, a scheme-relative or relative URL."""
    if not url or not url.isascii() or not url.isprintable() or "\\" in url or " " in url:
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return False
    segments = parts.path.split("/")
    if "." in segments or ".." in segments or _ENCODED_SEPARATORS.search(parts.path):
        return False
    default = {"http": 80, "https": 443}
    for prefix in prefixes:
        allowed = urllib.parse.urlsplit(prefix)
        if (parts.scheme, parts.hostname) != (allowed.scheme, allowed.hostname):
            continue
        if (port or default[parts.scheme]) != (allowed.port or default[allowed.scheme]):
            continue
        base = allowed.path or "/"
        path = parts.path or "/"
        if path == base or path.startswith(base if base.endswith("/") else base + "/"):
            return True
    return False


def _hash(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


class WebLogin:
    """BuildAuthorizeUrl, ExchangeCode and GetUserInfo."""

    def __init__(self, deps: IdentityDeps, *, open_base: str) -> None:
        self._deps = deps
        self._open_base = open_base
        self._wechat, self._tokens, self._sessions = deps.wechat, deps.tokens, deps.sessions
        self._store, self._vault, self._clock = deps.store, deps.vault, deps.clock

    def _web_app(self, app_id: str) -> AppConfig:
        """An official account or a website app (the two kinds that log users in on the web)."""
        return self._deps.app(
            app_id,
            ("official_account", "website"),
            "web login belongs to official accounts and websites",
        )

    async def build_authorize_url(
        self, app_id: str, scope: str, return_url: str, *, force_popup: bool, binding: str
    ) -> AuthorizeUrl:
        """A new flow: its state, stored with the browser binding, and WeChat's URL (the
        QR-code page for a website app). An empty `scope` is the app's default."""
        app = self._web_app(app_id)
        if not app.oauth.public_base_url:
            raise AppKindMismatch("web login is not configured for this app ([apps.oauth])")
        checks = Checks()
        website = app.kind == "website"
        scope = scope or (WEBSITE_SCOPE if website else "snsapi_base")
        if website and scope != WEBSITE_SCOPE:
            checks.fail("scope", "a website app logs in with AUTHORIZE_SCOPE_LOGIN only")
        elif not website and scope not in SCOPES:
            checks.fail("scope", "must be AUTHORIZE_SCOPE_BASE or AUTHORIZE_SCOPE_USERINFO")
        if not _BINDING.fullmatch(binding):
            checks.fail("browser_binding", "must be the SHA-256 hex of the browser's value")
        checks.done()
        if not return_url_allowed(return_url, app.oauth.return_urls):
            raise ReturnUrlNotAllowed("return_url is not on the app's allow-list")
        alphabet = string.ascii_letters + string.digits
        state = "".join(secrets.choice(alphabet) for _ in range(_STATE_LENGTH))
        expires_at = self._clock.now() + STATE_SECONDS
        await self._store.save_state(
            app.app_id,
            state,
            {
                "scope": scope,
                "return_url": return_url,
                "binding": binding,
                "expires_ms": str(int(expires_at * 1000)),
            },
            ttl_ms=STATE_SECONDS * 1000,
        )
        redirect = f"{app.oauth.public_base_url}/oauth/{app.app_id}/callback"
        # WeChat's order; the redirect fully escaped; `#wechat_redirect` mandatory.
        query = (
            f"appid={app.app_id}&redirect_uri={urllib.parse.quote(redirect, safe='')}"
            f"&response_type=code&scope={scope}&state={state}"
            + ("&forcePopup=true" if force_popup else "")
        )
        page = "connect/qrconnect" if website else "connect/oauth2/authorize"
        url = f"{self._open_base}/{page}?{query}#wechat_redirect"
        return AuthorizeUrl(url, state, expires_at)

    async def exchange_code(
        self, app_id: str, code: str, state: str, *, binding: str, deadline: float
    ) -> WebIdentity:
        """Complete a flow: check the state, trade the code, keep tokens, make a session."""
        app = self._web_app(app_id)
        checks = Checks()
        if not code or len(code) > 256 or not code.isascii() or not code.isprintable():
            checks.fail("code", "must be WeChat's code")
        checks.done()
        if not _STATE.fullmatch(state) or not _BINDING.fullmatch(binding):
            raise OAuthStateInvalid("the state is unknown, expired, used or forged")
        code_hash = _hash(code)
        exchange = _hash(state, code)
        earlier = await self._store.exchange(app.app_id, exchange)
        if not earlier:
            verdict, flow = await self._store.claim_state(
                app.app_id, state, binding, code_hash, now_ms=int(self._clock.now() * 1000)
            )
            if verdict == "busy":
                earlier = await self._wait_for_first(app.app_id, exchange, deadline)
            elif verdict != "go":
                raise OAuthStateInvalid("the state is unknown, expired, used or forged")
            else:
                earlier = await self._exchange(
                    app, code, state, code_hash=code_hash, flow=flow, deadline=deadline
                )
                earlier["binding"] = binding
                await self._store.record_exchange(
                    app.app_id, exchange, earlier, ttl_ms=CODE_SECONDS * 1000
                )
        if earlier.get("binding") != binding:
            raise OAuthStateInvalid("the state is unknown, expired, used or forged")
        snapshot = earlier["snapshot"] == "1"
        created = (
            None
            if snapshot
            else await self._sessions.create(
                app.app_id,
                earlier["openid"],
                unionid=earlier["unionid"],
                attributes={"login": earlier["scope"]},
            )
        )
        return WebIdentity(
            openid=earlier["openid"],
            unionid=earlier["unionid"],
            scope=earlier["scope"],
            snapshot_user=snapshot,
            return_url=earlier["return_url"],
            created=created,
        )

    async def _exchange(
        self,
        app: AppConfig,
        code: str,
        state: str,
        *,
        code_hash: str,
        flow: dict[str, str],
        deadline: float,
    ) -> dict[str, str]:
        """The WeChat half of a first exchange; returns the exchange's record."""
        try:
            data = await self._wechat.get(
                "/sns/oauth2/access_token",
                {
                    "appid": app.app_id,
                    "secret": app.app_secret.reveal(),
                    "code": code,
                    "grant_type": "authorization_code",
                },
                deadline=deadline,
                call=Call.EXCHANGE,
            )
        except WeChatUnavailable:
            # Not sent: the code is unspent, so the same callback may be tried again.
            await self._store.release_state(app.app_id, state, code_hash)
            raise
        tokens = _token_answer(data)
        openid = tokens["openid"]
        snapshot = data.get("is_snapshotuser") == 1
        record = {
            "openid": openid,
            "unionid": tokens["unionid"],
            "scope": tokens["scope"] or flow["scope"],
            "snapshot": "1" if snapshot else "0",
            "return_url": flow["return_url"],
        }
        if snapshot:
            return record  # a virtual user of a snapshot page: nothing to keep
        await self._save_tokens(app.app_id, openid, tokens)
        if any(scope in record["scope"] for scope in _PROFILE_SCOPES):
            profile = await self._fetch_profile(tokens["access_token"], openid, "zh_CN", deadline)
            await self._save_profile(app.app_id, profile)
            record["unionid"] = record["unionid"] or profile.unionid
        return record

    async def _wait_for_first(self, app_id: str, exchange: str, deadline: float) -> dict[str, str]:
        """A reload that came while the first request with the code is still exchanging."""
        until = min(deadline, time.monotonic() + _WAIT_FOR_FIRST)
        pause = 0.02
        while time.monotonic() + pause < until:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
            if found := await self._store.exchange(app_id, exchange):
                return found
        raise OAuthStateInvalid("the first request with this code has not finished")

    async def user_info(self, app_id: str, openid: str, lang: str, *, deadline: float) -> Profile:
        """The user's profile: a follower's from `cgi-bin/user/info`, else the stored
        OAuth profile (refreshed with the user's tokens when stale)."""
        app = self._web_app(app_id)
        checks = Checks()
        checks.openid("openid", openid)
        if lang and lang not in _LANGS:
            checks.fail("lang", f"must be one of {', '.join(_LANGS)}")
        checks.done()
        lang = lang or "zh_CN"

        async def follower(token: str) -> dict[str, Any]:
            return await self._wechat.get(
                "/cgi-bin/user/info",
                {"access_token": token, "openid": openid, "lang": lang},
                deadline=deadline,
            )

        if app.kind == "official_account":  # a website has no followers, nor a base token
            data = await self._tokens.with_token(app, follower, deadline=deadline)
            if data.get("subscribe") == 1:
                return _profile(data)
        record = await self._store.user_tokens(app.app_id, openid)
        if not record:
            raise UserAuthorizationRequired("the user has not authorized this app")
        if "profile" in record and self._clock.now() * 1000 - int(record["profile_ms"]) < (
            PROFILE_FRESH_SECONDS * 1000
        ):
            return _profile(json.loads(record["profile"]))
        if not any(scope in record.get("scope", "") for scope in _PROFILE_SCOPES):
            raise UserAuthorizationRequired("the user granted snsapi_base only")
        access = await self._access_token(app, openid, record, deadline)
        try:
            profile = await self._fetch_profile(access, openid, lang, deadline)
        except WeChatRefused as exc:
            if exc.retry != "token":
                raise
            refreshed = await self._refresh(app, openid, record, deadline)
            profile = await self._fetch_profile(refreshed, openid, lang, deadline)
        await self._save_profile(app.app_id, profile)
        return profile

    async def _access_token(
        self, app: AppConfig, openid: str, record: dict[str, str], deadline: float
    ) -> str:
        if int(record.get("access_expires_ms", "0")) > self._clock.now() * 1000 + 60_000:
            return self._open(app.app_id, openid, "access", record["access"])
        return await self._refresh(app, openid, record, deadline)

    async def _refresh(
        self, app: AppConfig, openid: str, record: dict[str, str], deadline: float
    ) -> str:
        """A new user access token from the refresh token (30 days), saved."""
        refresh = self._open(app.app_id, openid, "refresh", record["refresh"])
        data = await self._wechat.get(
            "/sns/oauth2/refresh_token",
            {"appid": app.app_id, "grant_type": "refresh_token", "refresh_token": refresh},
            deadline=deadline,
        )
        tokens = _token_answer(data)
        await self._save_tokens(app.app_id, openid, tokens)
        return tokens["access_token"]

    async def _fetch_profile(
        self, access_token: str, openid: str, lang: str, deadline: float
    ) -> Profile:
        data = await self._wechat.get(
            "/sns/userinfo",
            {"access_token": access_token, "openid": openid, "lang": lang},
            deadline=deadline,
        )
        return _profile(data)

    async def _save_tokens(self, app_id: str, openid: str, tokens: dict[str, str]) -> None:
        now_ms = int(self._clock.now() * 1000)
        await self._store.save_user_tokens(
            app_id,
            openid,
            {
                "access": self._seal(app_id, openid, "access", tokens["access_token"]),
                "access_expires_ms": str(now_ms + int(tokens["expires_in"]) * 1000),
                "refresh": self._seal(app_id, openid, "refresh", tokens["refresh_token"]),
                "scope": tokens["scope"],
            },
            ttl_ms=TOKEN_RECORD_SECONDS * 1000,
        )

    async def _save_profile(self, app_id: str, profile: Profile) -> None:
        body = {
            "openid": profile.openid,
            "nickname": profile.nickname,
            "headimgurl": profile.head_image_url,
            "unionid": profile.unionid,
            "privilege": list(profile.privileges),
        }
        await self._store.save_user_tokens(
            app_id,
            profile.openid,
            {
                "profile": json.dumps(body, ensure_ascii=False),
                "profile_ms": str(int(self._clock.now() * 1000)),
            },
            ttl_ms=TOKEN_RECORD_SECONDS * 1000,
        )

    def _seal(self, app_id: str, openid: str, kind: str, value: str) -> str:
        return self._vault.seal(value.encode(), f"oauth:{kind}:{app_id}:{openid}".encode())

    def _open(self, app_id: str, openid: str, kind: str, sealed: str) -> str:
        try:
            return self._vault.open(sealed, f"oauth:{kind}:{app_id}:{openid}".encode()).decode()
        except VaultError:
            raise UserAuthorizationRequired(
                "the user's OAuth tokens cannot be read: authorize again"
            ) from None


def _token_answer(data: Mapping[str, Any]) -> dict[str, str]:
    """The fields of `sns/oauth2/access_token` (and `refresh_token`) answers, checked."""
    access, refresh = data.get("access_token"), data.get("refresh_token")
    openid, expires_in = data.get("openid"), data.get("expires_in")
    scope, unionid = data.get("scope", ""), data.get("unionid", "")
    if (
        not isinstance(access, str)
        or not access
        or not isinstance(refresh, str)
        or not refresh
        or not isinstance(openid, str)
        or not _OPENID.fullmatch(openid)
        or not isinstance(expires_in, int)
        or not isinstance(scope, str)
        or not isinstance(unionid, str)
    ):
        raise WeChatBadResponse("WeChat's OAuth token answer is malformed")
    return {
        "access_token": access,
        "refresh_token": refresh,
        "openid": openid,
        "expires_in": str(expires_in),
        "scope": scope,
        "unionid": unionid,
    }


def _profile(data: Mapping[str, Any]) -> Profile:
    openid = data.get("openid")
    if not isinstance(openid, str) or not openid:
        raise WeChatBadResponse("WeChat's user info has no openid")
    privileges = data.get("privilege") or []
    return Profile(
        openid=openid,
        nickname=str(data.get("nickname", "")),
        head_image_url=str(data.get("headimgurl", "")),
        unionid=str(data.get("unionid", "")),
        privileges=tuple(str(p) for p in privileges) if isinstance(privileges, list) else (),
    )

"""The central access token (WeChat's 中控服务器) and the JS-SDK ticket and signature."""

from __future__ import annotations

import logging
import secrets
import string
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.credential_store import CredentialStore
from wxplatform.core.adapters.wechat_client import Call, WeChatClient
from wxplatform.core.services.credentials import Credential, CredentialManager, StillCurrent
from wxplatform.errors import (
    AppKindMismatch,
    AppNotFound,
    FieldViolation,
    InvalidRequest,
    TokenRefreshLimited,
    TokenRejected,
    WeChatBadResponse,
    WeChatOutcomeUnknown,
    WeChatRefused,
    WeChatUnavailable,
    WxPlatformError,
)
from wxplatform.wechat.daily import day_number, next_reset
from wxplatform.wechat.signature import jssdk_signature

__all__ = ["JsSdkConfig", "TokenService"]

T = TypeVar("T")

log = logging.getLogger("wxplatform.core.tokens")

# stable_token force mode: WeChat ignores forced refreshes closer than 30 s and allows 20
# a day (docs/wechat.md §5.1). Counted per Beijing day, when WeChat's quotas reset.
_FORCE_GAP_MS = 30_000
_FORCE_PER_DAY = 20


def _as_the_browser_reports(url: str) -> str:
    """The page URL as `location.href` gives it, which is what WeChat signs.

    Without the fragment; scheme and host in lower case (an internationalized host in
    punycode), no default port, `/` for an empty path, and non-ASCII characters and
    spaces in path and query %-escaped, as browsers normalize them. The rest stays as
    given (existing escapes are kept).
    """
    try:
        parts = urllib.parse.urlsplit(url.split("#", 1)[0])
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise InvalidRequest(FieldViolation("url", "must be an absolute http(s) URL")) from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in ("http", "https") or not host or port == -1 or "@" in parts.netloc:
        raise InvalidRequest(FieldViolation("url", "must be an absolute http(s) URL"))
    if ":" in host:  # IPv6
        host = f"[{host}]"
    elif not host.isascii():  # the browser shows an internationalized name as punycode
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidRequest(FieldViolation("url", "has an invalid host name")) from None
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    path, query = _escaped(parts.path or "/"), _escaped(parts.query)
    return urllib.parse.urlunsplit((scheme, host, path, query, ""))


_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def _escaped(text: str) -> str:
    """Non-ASCII characters, spaces and controls as UTF-8 %-escapes, as `location.href`."""
    return urllib.parse.quote(text, safe=_PRINTABLE_ASCII)


@dataclass(frozen=True)
class JsSdkConfig:
    """What a page passes to `wx.config`."""

    app_id: str
    timestamp: int
    nonce_str: str
    signature: str
    url: str


def _credential(data: Mapping[str, Any], name: str) -> tuple[str, int]:
    value, expires_in = data.get(name), data.get("expires_in")
    if (
        not isinstance(value, str)
        or not value
        or not isinstance(expires_in, int)
        or expires_in <= 0
    ):
        raise WeChatBadResponse(f"WeChat's answer has no usable {name}")
    return value, expires_in


class TokenService:
    """Access tokens and JS-SDK tickets for every app, shared by all replicas and teams."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        wechat: WeChatClient,
        token_store: CredentialStore,
        ticket_store: CredentialStore,
        clock: Clock,
    ) -> None:
        self._apps = apps
        self._wechat = wechat
        self._clock = clock
        self._force_store = token_store
        self.tokens = CredentialManager("access_token", token_store, self._fetch_token, clock)
        self.tickets = CredentialManager("jsapi_ticket", ticket_store, self._fetch_ticket, clock)

    def app(self, app_id: str) -> AppConfig:
        """The configured app, or `AppNotFound`; a website app has no access token."""
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        if app.kind == "website":
            raise AppKindMismatch("a website app has no access token")
        return app

    async def get_access_token(self, app_id: str, *, deadline: float) -> Credential:
        """The app's current access token."""
        return await self.tokens.get(self.app(app_id), deadline=deadline)

    async def invalidate_access_token(
        self, app_id: str, token: str, *, deadline: float
    ) -> tuple[bool, Credential]:
        """Discard `token` if it is still current; returns the token to use now."""
        if not token:
            raise InvalidRequest(FieldViolation("access_token", "is required"))
        return await self.tokens.invalidate(self.app(app_id), token, deadline=deadline)

    async def with_token(
        self, app: AppConfig, call: Callable[[str], Awaitable[T]], *, deadline: float
    ) -> T:
        """Run `call(access_token)`; if WeChat rejects the token, replace it and retry once.

        Raises `TokenRejected` when the replacement is rejected too, and what getting a
        token raised (`CredentialsRefused`, …) when there was none: in neither case did
        WeChat consider what `call` asked for. Any other refusal is `call`'s own.
        """
        token = await self.tokens.get(app, deadline=deadline)
        try:
            return await call(token.value)
        except WeChatRefused as exc:
            if exc.retry != "token":
                raise
        # Never loop: one retry with the replacement.
        _, token = await self.tokens.invalidate(app, token.value, deadline=deadline)
        try:
            return await call(token.value)
        except WeChatRefused as exc:
            if exc.retry != "token":
                raise
            raise TokenRejected(
                f"WeChat rejected the replacement access token as well ({exc.errcode})"
            ) from None

    async def js_sdk_config(self, app_id: str, url: str, *, deadline: float) -> JsSdkConfig:
        """The signed `wx.config` values for a page."""
        app = self.app(app_id)
        if app.kind != "official_account":
            raise AppKindMismatch("the JS-SDK belongs to official accounts")
        page = _as_the_browser_reports(url)
        ticket = await self.tickets.get(app, deadline=deadline)
        nonce = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))
        timestamp = int(self._clock.now())
        signature = jssdk_signature(ticket.value, nonce, timestamp, page)
        return JsSdkConfig(app.app_id, timestamp, nonce, signature, page)

    async def _fetch_token(
        self, app: AppConfig, rejected: str | None, deadline: float
    ) -> tuple[str, int]:
        if app.token_mode == "classic":  # noqa: S105 - a mode name
            data = await self._wechat.get(
                "/cgi-bin/token",
                {
                    "grant_type": "client_credential",
                    "appid": app.app_id,
                    "secret": app.app_secret.reveal(),
                },
                deadline=deadline,
                call=Call.TOKEN,
            )
            return _credential(data, "access_token")
        token = await self._stable_token(app, force=False, deadline=deadline)
        if rejected is None or token[0] != rejected:
            return token
        # Normal mode hands back the same token while WeChat thinks it valid; the caller
        # saw it rejected (leaked and force-refreshed elsewhere), so force a new one.
        now = self._clock.now()
        wait_ms = await self._force_store.allow_forced_refresh(
            app.app_id,
            int(now * 1000),
            day_number(now),
            gap_ms=_FORCE_GAP_MS,
            per_day=_FORCE_PER_DAY,
        )
        if wait_ms != 0:
            # WeChat's limits forbid forcing now. The token stays in service (WeChat
            # itself still hands it out); only this refresh fails.
            raise StillCurrent(
                *token,
                TokenRefreshLimited(
                    "a forced token refresh is limited to one per 30 s and 20 a day",
                    retry_after=wait_ms / 1000 if wait_ms > 0 else max(next_reset(now) - now, 1.0),
                ),
            )
        try:
            return await self._stable_token(app, force=True, deadline=deadline)
        except WeChatOutcomeUnknown as exc:
            # Whether WeChat forced a new token is unknown, but no message was sent:
            # to a send this is a token that could not be had, never its own outcome.
            raise WeChatUnavailable(f"forced token refresh: {exc.message}") from None

    async def _stable_token(
        self, app: AppConfig, *, force: bool, deadline: float
    ) -> tuple[str, int]:
        body = {
            "grant_type": "client_credential",
            "appid": app.app_id,
            "secret": app.app_secret.reveal(),
            "force_refresh": force,
        }
        data = await self._wechat.post(
            "/cgi-bin/stable_token",
            {},
            body,
            deadline=deadline,
            call=Call.FORCED_TOKEN if force else Call.TOKEN,
        )
        return _credential(data, "access_token")

    async def _fetch_ticket(
        self, app: AppConfig, rejected: str | None, deadline: float
    ) -> tuple[str, int]:
        async def fetch(token: str) -> dict[str, Any]:
            return await self._wechat.get(
                "/cgi-bin/ticket/getticket",
                {"access_token": token, "type": "jsapi"},
                deadline=deadline,
            )

        data = await self.with_token(app, fetch, deadline=deadline)
        return _credential(data, "ticket")

    async def close(self) -> None:
        """Wait for refreshes still in flight."""
        await self.tokens.close()
        await self.tickets.close()

    async def keep_fresh(self) -> None:
        """One pass of the background refresher over every app's token and ticket."""
        for app in self._apps.values():
            if app.kind == "website":
                continue  # nothing to keep fresh: website apps have no access token
            deadline = time.monotonic() + 10
            managers = (
                [self.tokens, self.tickets] if app.kind == "official_account" else [self.tokens]
            )
            for manager in managers:
                # One app's failure must not starve the apps after it.
                try:
                    await manager.refresh_if_due(app, deadline=deadline)
                except WxPlatformError as exc:
                    log.warning(
                        "background refresh failed",
                        extra={"app_id": app.app_id, "kind": manager.kind, "reason": exc.reason},
                    )
                except Exception:
                    log.exception(
                        "background refresh failed",
                        extra={"app_id": app.app_id, "kind": manager.kind},
                    )

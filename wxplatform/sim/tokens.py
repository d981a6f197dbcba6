"""access_token state of the simulated WeChat: `/cgi-bin/token` and `/cgi-bin/stable_token`.

The two endpoints keep completely separate state per app (docs/wechat.md §5.1, §7): neither
invalidates the other's tokens. Both share one registry, because any API endpoint
accepts a token from either. Time always comes from the injected clock, so tests can
walk through expiry and overlap windows without sleeping.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.errors import ApiError

__all__ = ["Caller", "TokenGrant", "TokenPolicy", "TokenStore", "beijing_day"]

TokenSource = Literal["token", "stable_token"]

# WeChat's quotas reset at midnight Beijing time (UTC+8, no DST).
_BEIJING_OFFSET = 8 * 3600


def beijing_day(timestamp: float) -> int:
    """Index of the Beijing-time calendar day that `timestamp` falls in."""
    return int((timestamp + _BEIJING_OFFSET) // 86400)


@dataclass(frozen=True)
class TokenPolicy:
    """The numbers WeChat documents (docs/wechat.md §5.1, §7); tests may shrink the quotas."""

    lifetime: float = 7200.0
    overlap: float = 300.0  # old token keeps working this long after a new one is issued
    daily_quota: int = 2000  # /cgi-bin/token calls per app per day
    stable_force_quota: int = 20  # forced stable_token refreshes per app per day
    stable_force_interval: float = 30.0  # forced refreshes closer than this do nothing


@dataclass(frozen=True)
class TokenGrant:
    """A successful token response: `{"access_token": …, "expires_in": …}`."""

    access_token: str = field(repr=False)
    expires_in: int

    def body(self) -> dict[str, Any]:
        """The JSON body WeChat returns."""
        return {"access_token": self.access_token, "expires_in": self.expires_in}


@dataclass(frozen=True)
class Caller:
    """Who an accepted access_token belongs to."""

    app: AppConfig
    source: TokenSource

    @property
    def app_id(self) -> str:
        """The app the token was issued to."""
        return self.app.app_id


@dataclass
class _Token:
    value: str = field(repr=False)
    app_id: str
    source: TokenSource
    issued_at: float
    expires_at: float
    # When a newer token made this one invalid (after the overlap); inf = never.
    superseded_at: float = math.inf

    def dead_at(self) -> float:
        return min(self.expires_at, self.superseded_at)


@dataclass
class _History:
    """One app's tokens from one endpoint."""

    current: _Token | None = None
    live: list[_Token] = field(default_factory=list)  # tokens that may still be valid
    issued: int = 0
    day: int = -1
    calls_today: int = 0
    forced: int = 0
    forced_today: int = 0
    last_forced_at: float | None = None

    def roll_day(self, day: int) -> None:
        if day != self.day:
            self.day, self.calls_today, self.forced_today = day, 0, 0


def _new_token_value() -> str:
    # Real tokens are ~150 characters of [A-Za-z0-9_-] behind a short numeric prefix.
    return f"{secrets.randbelow(90) + 10}_{secrets.token_urlsafe(112)}"


class TokenStore:
    """Issues and checks access tokens like WeChat does, for a fixed set of apps."""

    def __init__(
        self, apps: Mapping[str, AppConfig], clock: Clock, policy: TokenPolicy | None = None
    ) -> None:
        self.apps = apps
        self.clock = clock
        self.policy = policy or TokenPolicy()
        self._registry: dict[str, _Token] = {}
        self._classic: dict[str, _History] = {a: _History() for a in apps}
        self._stable: dict[str, _History] = {a: _History() for a in apps}

    def authenticate(self, appid: str, secret: str) -> AppConfig:
        """The app for an appid/secret pair, or the errcode WeChat gives for the pair."""
        if not appid:
            raise ApiError(41002)
        if not secret:
            raise ApiError(41004)
        app = self.apps.get(appid)
        if app is None:
            raise ApiError(40013)
        if not hmac.compare_digest(secret.encode(), app.app_secret.reveal().encode()):
            # On the token endpoints a wrong AppSecret is 40001 "invalid credential".
            raise ApiError(40001)
        return app

    def issue(self, app_id: str) -> TokenGrant:
        """`/cgi-bin/token`: always a new token; the previous one keeps the overlap."""
        now = self.clock.now()
        history = self._classic[app_id]
        history.roll_day(beijing_day(now))
        if history.calls_today >= self.policy.daily_quota:
            raise ApiError(45009)
        history.calls_today += 1
        return self._replace(history, app_id, "token", now)

    def stable(self, app_id: str, *, force: bool) -> TokenGrant:
        """`/cgi-bin/stable_token` in normal or force mode."""
        now = self.clock.now()
        history = self._stable[app_id]
        history.roll_day(beijing_day(now))
        if force:
            if history.forced_today >= self.policy.stable_force_quota:
                raise ApiError(45009)
            recent = history.last_forced_at is not None and (
                now - history.last_forced_at < self.policy.stable_force_interval
            )
            if not recent:
                history.forced += 1
                history.forced_today += 1
                history.last_forced_at = now
                return self._replace(history, app_id, "stable_token", now)
            # Forced calls closer than 30 s apart do not refresh: normal behaviour below.
        current = history.current
        if current is not None and now < current.expires_at - self.policy.overlap:
            return TokenGrant(current.value, int(current.expires_at - now))
        # Roll 5 minutes before expiry. The old token is not cut short: it works until
        # its own expiry, so every token handed out has expires_in >= 300.
        return self._add(history, app_id, "stable_token", now)

    def check(self, access_token: str) -> Caller:
        """The caller behind `access_token`, or the errcode an API endpoint returns."""
        if not access_token:
            raise ApiError(41001)
        token = self._registry.get(access_token)
        if token is None:
            raise ApiError(40014)
        now = self.clock.now()
        if now < token.dead_at():
            return Caller(self.apps[token.app_id], token.source)
        # Report whatever killed the token first: its age, or a newer token.
        if token.expires_at <= token.superseded_at:
            raise ApiError(42001)
        raise ApiError(40001)

    def _replace(
        self, history: _History, app_id: str, source: TokenSource, now: float
    ) -> TokenGrant:
        """Issue a new token: the current one gets the overlap, all older ones die now."""
        for token in history.live:
            limit = now + self.policy.overlap if token is history.current else now
            token.superseded_at = min(token.superseded_at, limit)
        return self._add(history, app_id, source, now)

    def _add(self, history: _History, app_id: str, source: TokenSource, now: float) -> TokenGrant:
        value = _new_token_value()
        token = _Token(value, app_id, source, now, now + self.policy.lifetime)
        self._registry[value] = token
        history.live = [t for t in history.live if t.dead_at() > now]
        history.live.append(token)
        history.current = token
        history.issued += 1
        return TokenGrant(value, int(self.policy.lifetime))

    def stats(self) -> dict[str, Any]:
        """Counters per app and endpoint (no token values)."""
        day = beijing_day(self.clock.now())
        out: dict[str, Any] = {}
        for app_id in self.apps:
            classic, stable = self._classic[app_id], self._stable[app_id]
            out[app_id] = {
                "token": {
                    "issued": classic.issued,
                    "calls_today": classic.calls_today if classic.day == day else 0,
                    "daily_quota": self.policy.daily_quota,
                },
                "stable_token": {
                    "issued": stable.issued,
                    "forced": stable.forced,
                    "forced_today": stable.forced_today if stable.day == day else 0,
                    "force_daily_quota": self.policy.stable_force_quota,
                },
            }
        return out

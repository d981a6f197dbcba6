"""Web authorization of the simulated WeChat: codes, user tokens and profiles.

docs/wechat.md §5.5, §5.9. A code is single use and expires 5 minutes after it was
handed out, on the simulator's clock (40029 unknown, 40163 used, 42003 expired). A
user access token lives 7200 s; a refresh token 30 days (40030 unknown, 42002
expired). `snsapi_base` tokens may not read `sns/userinfo` (48001). A profile marked
`snapshot` is WeChat's virtual snapshot-page user (`is_snapshotuser: 1`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.errors import ApiError

__all__ = ["DEFAULT_OPENID", "OAuthBook", "SimProfile"]

CODE_LIFETIME = 300.0
ACCESS_LIFETIME = 7200
REFRESH_LIFETIME = 30 * 86400.0
DEFAULT_OPENID = "oBrowserUser000000000001"


@dataclass
class SimProfile:
    """What WeChat knows of a user of one app."""

    openid: str
    nickname: str = "WeChat user"
    head_image_url: str = "https://thirdwx.qlogo.cn/mmopen/sim/132"
    unionid: str = ""
    snapshot: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "openid": self.openid,
            "nickname": self.nickname,
            "headimgurl": self.head_image_url,
            "unionid": self.unionid,
            "snapshot": self.snapshot,
        }


@dataclass
class _Grant:
    app_id: str
    openid: str
    scope: str
    expires_at: float
    used: bool = False


@dataclass
class _Tokens:
    app_id: str
    openid: str
    scope: str
    access: str
    access_expires_at: float
    refresh: str
    refresh_expires_at: float
    history: list[str] = field(default_factory=list)


class OAuthBook:
    """Profiles, authorization codes and user tokens, per app."""

    def __init__(self, apps: Mapping[str, AppConfig], clock: Clock) -> None:
        self._apps = apps
        self._clock = clock
        self._profiles: dict[tuple[str, str], SimProfile] = {}
        self._browser_user: dict[str, str] = {}
        self._codes: dict[str, _Grant] = {}
        self._by_access: dict[str, _Tokens] = {}
        self._by_refresh: dict[str, _Tokens] = {}

    def set_profile(self, app_id: str, openid: str, **fields: Any) -> SimProfile:
        """Register or update a user's profile (`nickname`, `unionid`, `snapshot`, …)."""
        if app_id not in self._apps:
            raise KeyError(f"unknown app {app_id!r}")
        profile = self._profiles.setdefault((app_id, openid), SimProfile(openid))
        for name, value in fields.items():
            if not hasattr(profile, name) or name == "openid":
                raise ValueError(f"unknown profile field {name!r}")
            setattr(profile, name, value)
        return profile

    def profile(self, app_id: str, openid: str) -> SimProfile:
        return self._profiles.get((app_id, openid)) or SimProfile(openid)

    def set_browser_user(self, app_id: str, openid: str) -> None:
        """Who the simulated browser is logged in to WeChat as, on the consent page."""
        self.set_profile(app_id, openid)
        self._browser_user[app_id] = openid

    def browser_user(self, app_id: str) -> str:
        return self._browser_user.get(app_id, DEFAULT_OPENID)

    def issued_tokens(self) -> set[str]:
        """Every user access and refresh token handed out that is still on record."""
        return set(self._by_access) | set(self._by_refresh)

    def grant(self, app_id: str, openid: str, scope: str) -> str:
        """The user consented (or `snsapi_base` is silent): a code for the redirect."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Grant(app_id, openid, scope, self._clock.now() + CODE_LIFETIME)
        return code

    def exchange(self, app_id: str, code: str) -> dict[str, Any]:
        """`sns/oauth2/access_token`: the user's tokens for a code, once."""
        grant = self._codes.get(code)
        if grant is None or grant.app_id != app_id:
            raise ApiError(40029)
        if grant.used:
            raise ApiError(40163)
        if grant.expires_at <= self._clock.now():
            raise ApiError(42003)
        grant.used = True
        now = self._clock.now()
        tokens = _Tokens(
            app_id,
            grant.openid,
            grant.scope,
            secrets.token_urlsafe(48),
            now + ACCESS_LIFETIME,
            secrets.token_urlsafe(48),
            now + REFRESH_LIFETIME,
        )
        self._by_access[tokens.access] = tokens
        self._by_refresh[tokens.refresh] = tokens
        return self._answer(tokens)

    def refresh(self, app_id: str, refresh_token: str) -> dict[str, Any]:
        """`sns/oauth2/refresh_token`: a new access token, the refresh token kept."""
        tokens = self._by_refresh.get(refresh_token)
        if tokens is None or tokens.app_id != app_id:
            raise ApiError(40030)
        if tokens.refresh_expires_at <= self._clock.now():
            raise ApiError(42002)
        self._by_access.pop(tokens.access, None)
        tokens.access = secrets.token_urlsafe(48)
        tokens.access_expires_at = self._clock.now() + ACCESS_LIFETIME
        self._by_access[tokens.access] = tokens
        return self._answer(tokens)

    def user_info(self, access_token: str, openid: str) -> dict[str, Any]:
        """`sns/userinfo` with a user access token."""
        tokens = self._live(access_token, openid)
        if tokens.scope == "snsapi_base":
            raise ApiError(48001)  # a silent login may not read the profile
        profile = self.profile(tokens.app_id, openid)
        body: dict[str, Any] = {
            "openid": openid,
            "nickname": profile.nickname,
            "sex": 0,
            "province": "",
            "city": "",
            "country": "",
            "headimgurl": profile.head_image_url,
            "privilege": [],
        }
        if profile.unionid:
            body["unionid"] = profile.unionid
        return body

    def check(self, access_token: str, openid: str) -> None:
        """`sns/auth`: whether a user access token is valid for `openid`."""
        self._live(access_token, openid)

    def _live(self, access_token: str, openid: str) -> _Tokens:
        tokens = self._by_access.get(access_token)
        if tokens is None:
            raise ApiError(40001)
        if tokens.openid != openid:
            raise ApiError(40003)
        if tokens.access_expires_at <= self._clock.now():
            raise ApiError(42001)
        return tokens

    def _answer(self, tokens: _Tokens) -> dict[str, Any]:
        profile = self.profile(tokens.app_id, tokens.openid)
        body: dict[str, Any] = {
            "access_token": tokens.access,
            "expires_in": ACCESS_LIFETIME,
            "refresh_token": tokens.refresh,
            "openid": tokens.openid,
            "scope": tokens.scope,
        }
        if profile.unionid and tokens.scope != "snsapi_base":
            body["unionid"] = profile.unionid
        if profile.snapshot:
            body["is_snapshotuser"] = 1
        return body

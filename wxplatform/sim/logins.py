"""Mini-program login and phone numbers of the simulated WeChat.

docs/wechat.md §5.6, §5.8, §5.11. `wx.login` codes and phone-number codes are single
use and expire after 5 minutes on the simulator's clock; exchanging a login code hands
out a new `session_key` for the user (so data encrypted with the previous one no longer
opens with the current one), and a blocked user's codes answer 40226.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.sim.errors import ApiError
from wxplatform.wechat.user_data import encrypt_user_data, raw_data_signature

__all__ = ["LoginBook", "UserData"]

CODE_LIFETIME = 300.0


@dataclass
class _Code:
    app_id: str
    subject: str  # the openid of a login code, the phone number of a phone code
    expires_at: float
    used: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UserData:
    """What a mini program receives from `wx.getUserInfo` and passes to its server."""

    encrypted_data: str
    iv: str
    raw_data: str
    signature: str


class LoginBook:
    """Login codes, phone codes, users' session keys and blocked users, per app."""

    def __init__(self, apps: Mapping[str, AppConfig], clock: Clock) -> None:
        self._apps = apps
        self._clock = clock
        self._codes: dict[str, _Code] = {}
        self._session_keys: dict[tuple[str, str], str] = {}
        self._unionids: dict[tuple[str, str], str] = {}
        self._blocked: set[tuple[str, str]] = set()

    def _mini_program(self, app_id: str) -> AppConfig:
        app = self._apps.get(app_id)
        if app is None or app.kind != "mini_program":
            raise KeyError(f"no mini program {app_id!r}")
        return app

    def login_code(self, app_id: str, openid: str, unionid: str = "") -> str:
        """What `wx.login` gives the user's mini program: a code for `jscode2session`."""
        self._mini_program(app_id)
        if unionid:
            self._unionids[(app_id, openid)] = unionid
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(app_id, openid, self._clock.now() + CODE_LIFETIME)
        return code

    def phone_code(self, app_id: str, phone_number: str, country_code: str = "86") -> str:
        """What the phone-number button gives the mini program: a code for the number."""
        self._mini_program(app_id)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            app_id, phone_number, self._clock.now() + CODE_LIFETIME, extra={"cc": country_code}
        )
        return code

    def block(self, app_id: str, openid: str) -> None:
        """Treat the user as high-risk: logins answer 40226."""
        self._mini_program(app_id)
        self._blocked.add((app_id, openid))

    def _take(self, app_id: str, code: str) -> _Code:
        found = self._codes.get(code)
        if found is None or found.app_id != app_id or found.expires_at <= self._clock.now():
            raise ApiError(40029)
        if found.used:
            raise ApiError(40163)
        found.used = True
        return found

    def exchange_login(self, app_id: str, js_code: str) -> dict[str, str]:
        """`jscode2session`: the user's openid, a new session key, and the unionid if any."""
        code = self._take(app_id, js_code)
        openid = code.subject
        if (app_id, openid) in self._blocked:
            raise ApiError(40226)
        session_key = base64.b64encode(secrets.token_bytes(16)).decode()
        self._session_keys[(app_id, openid)] = session_key
        answer = {"openid": openid, "session_key": session_key}
        if unionid := self._unionids.get((app_id, openid)):
            answer["unionid"] = unionid
        return answer

    def exchange_phone(self, app_id: str, code: str) -> dict[str, Any]:
        """`getuserphonenumber`: the number behind a phone code."""
        taken = self._take(app_id, code)
        country = taken.extra["cc"]
        pure = taken.subject
        return {
            "phoneNumber": pure if country == "86" else f"+{country}{pure}",
            "purePhoneNumber": pure,
            "countryCode": country,
            "watermark": {"appid": app_id, "timestamp": int(self._clock.now())},
        }

    def issued_keys(self) -> set[str]:
        """Every session key handed out so far (what must never be stored in the clear)."""
        return set(self._session_keys.values())

    def session_key(self, app_id: str, openid: str) -> str:
        """The user's current session key (a login must have happened)."""
        try:
            return self._session_keys[(app_id, openid)]
        except KeyError:
            raise KeyError(f"{openid!r} has not logged in to {app_id!r}") from None

    def user_data(self, app_id: str, openid: str, data: Mapping[str, Any]) -> UserData:
        """`data` as WeChat hands it to the mini program: encrypted with the user's current
        session key and watermarked, with the signed `rawData` beside it."""
        key = self.session_key(app_id, openid)
        watermarked = {**data, "watermark": {"appid": app_id, "timestamp": int(self._clock.now())}}
        iv = secrets.token_bytes(16)
        raw = json.dumps(dict(data), ensure_ascii=False, separators=(",", ":"))
        return UserData(
            encrypted_data=encrypt_user_data(key, watermarked, iv),
            iv=base64.b64encode(iv).decode(),
            raw_data=raw,
            signature=raw_data_signature(raw, key),
        )

"""Mini-program identity: login (`jscode2session`), open data, phone numbers.

docs/wechat.md §5.6, §5.8, §5.11. The user's `session_key` never leaves core: each login
replaces it, sealed by the vault, in the identity store, and a platform session (see
`sessions.py`) is what the mini program's server gets instead. Open data is decrypted
here with the key held for the session's user; data made with the key a later login
replaced is told apart, so the mini program knows to send fresh data.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wxplatform.config import AppConfig
from wxplatform.core.adapters.wechat_client import Call
from wxplatform.core.services.checks import Checks
from wxplatform.core.services.identity import IdentityDeps
from wxplatform.core.services.sessions import NewSession, check_attributes
from wxplatform.core.services.vault import VaultError
from wxplatform.errors import (
    FieldViolation,
    InvalidRequest,
    UserDataInvalid,
    WeChatBadResponse,
)
from wxplatform.wechat.user_data import (
    MalformedUserData,
    OpenData,
    UserDataError,
    decrypt_user_data,
    signature_matches,
)

__all__ = ["Login", "MiniProgramIdentity", "PhoneNumber"]

_OPENID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_CODE = 256


@dataclass(frozen=True)
class Login:
    """A mini-program login: the user, and the platform session made for them."""

    openid: str
    unionid: str
    created: NewSession


@dataclass(frozen=True)
class PhoneNumber:
    """A user's phone number as WeChat reports it."""

    phone_number: str
    pure_phone_number: str
    country_code: str
    watermark_timestamp: int


class MiniProgramIdentity:
    """Code2Session, DecryptUserData and GetPhoneNumber."""

    def __init__(self, deps: IdentityDeps) -> None:
        self._deps = deps
        self._wechat, self._tokens, self._sessions = deps.wechat, deps.tokens, deps.sessions
        self._store, self._vault, self._clock = deps.store, deps.vault, deps.clock

    def _mini_program(self, app_id: str) -> AppConfig:
        return self._deps.app(app_id, ("mini_program",), "this belongs to mini programs")

    async def code_to_session(
        self, app_id: str, js_code: str, attributes: Mapping[str, str], *, deadline: float
    ) -> Login:
        """Exchange a `wx.login` code; keep the new session key; make a platform session."""
        app = self._mini_program(app_id)
        checks = Checks()
        _check_code(checks, "js_code", js_code)
        check_attributes(checks, attributes)
        checks.done()  # before the code is spent at WeChat
        data = await self._wechat.get(
            "/sns/jscode2session",
            {
                "appid": app.app_id,
                "secret": app.app_secret.reveal(),
                "js_code": js_code,
                "grant_type": "authorization_code",
            },
            deadline=deadline,
            call=Call.EXCHANGE,
        )
        openid, session_key, unionid = _login_answer(data)
        now_ms = int(self._clock.now() * 1000)
        await self._store.replace_session_key(
            app.app_id,
            openid,
            self._vault.seal(session_key.encode(), _context(app.app_id, openid)),
            now_ms=now_ms,
            ttl_ms=app.sessions.absolute_ttl_seconds * 1000,
        )
        created = await self._sessions.create(
            app.app_id, openid, unionid=unionid, attributes=attributes
        )
        return Login(openid, unionid, created)

    async def decrypt_user_data(
        self,
        app_id: str,
        session_token: str,
        encrypted_data: str,
        iv: str,
        *,
        raw_data: str = "",
        signature: str = "",
    ) -> OpenData:
        """Open a session user's `encryptedData` and check its watermark (and signature)."""
        app = self._mini_program(app_id)
        if bool(raw_data) != bool(signature):
            missing = "signature" if raw_data else "raw_data"
            raise InvalidRequest(FieldViolation(missing, "is required with the other"))
        session = await self._sessions.get(app.app_id, session_token)
        current, previous = await self._store.session_keys(app.app_id, session.openid)
        if current is None:
            raise UserDataInvalid("the session's user has no mini-program login: log in again")
        key = self._open_key(app.app_id, session.openid, current)
        try:
            opened = decrypt_user_data(key, encrypted_data, iv)
        except MalformedUserData as exc:
            raise UserDataInvalid(str(exc)) from None
        except UserDataError:
            stale = previous is not None and self._opens(
                app.app_id, session.openid, previous, encrypted_data, iv
            )
            if stale:
                raise UserDataInvalid(
                    "made with a session key that a later login replaced: send fresh data"
                ) from None
            raise UserDataInvalid("does not decrypt with the user's session key") from None
        if opened.appid != app.app_id:
            raise UserDataInvalid("the watermark names another app")
        if raw_data and not signature_matches(raw_data, key, signature):
            raise UserDataInvalid("signature does not match raw_data")
        return opened

    async def phone_number(self, app_id: str, code: str, *, deadline: float) -> PhoneNumber:
        """The phone number behind a phone-number button's code."""
        app = self._mini_program(app_id)
        checks = Checks()
        _check_code(checks, "code", code)
        checks.done()

        async def call(token: str) -> dict[str, Any]:
            return await self._wechat.post(
                "/wxa/business/getuserphonenumber",
                {"access_token": token},
                {"code": code},
                deadline=deadline,
                call=Call.EXCHANGE,
            )

        data = await self._tokens.with_token(app, call, deadline=deadline)
        return _phone_answer(app.app_id, data)

    def _open_key(self, app_id: str, openid: str, sealed: str) -> str:
        try:
            return self._vault.open(sealed, _context(app_id, openid)).decode()
        except VaultError as exc:
            # A key rotated away too early, or a record tampered with: the user logs in again.
            raise UserDataInvalid(f"the user's session key cannot be read ({exc})") from None

    def _opens(self, app_id: str, openid: str, sealed: str, encrypted: str, iv: str) -> bool:
        """Whether the data opens with this (replaced) session key."""
        try:
            decrypt_user_data(self._open_key(app_id, openid, sealed), encrypted, iv)
        except (UserDataError, UserDataInvalid):
            return False
        return True


def _context(app_id: str, openid: str) -> bytes:
    """What a sealed session key belongs to (the vault binds it)."""
    return f"session_key:{app_id}:{openid}".encode()


def _check_code(checks: Checks, field: str, code: str) -> None:
    if not code:
        checks.fail(field, "is required")
    elif len(code) > _MAX_CODE or not code.isascii() or not code.isprintable():
        checks.fail(field, f"must be 1-{_MAX_CODE} printable ASCII characters")


def _login_answer(data: Mapping[str, Any]) -> tuple[str, str, str]:
    """(openid, session_key, unionid) from `jscode2session`'s answer."""
    openid, key, unionid = data.get("openid"), data.get("session_key"), data.get("unionid", "")
    if not isinstance(openid, str) or not _OPENID.fullmatch(openid):
        raise WeChatBadResponse("jscode2session answered without a usable openid")
    try:
        valid_key = isinstance(key, str) and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key or not isinstance(key, str):
        raise WeChatBadResponse("jscode2session answered without a usable session_key")
    if not isinstance(unionid, str) or (unionid and not _OPENID.fullmatch(unionid)):
        raise WeChatBadResponse("jscode2session answered with a malformed unionid")
    return openid, key, unionid


def _phone_answer(app_id: str, data: Mapping[str, Any]) -> PhoneNumber:
    info = data.get("phone_info")
    if not isinstance(info, dict):
        raise WeChatBadResponse("getuserphonenumber answered without phone_info")
    watermark = info.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != app_id:
        raise UserDataInvalid("the phone number's watermark names another app")
    number, pure = info.get("phoneNumber"), info.get("purePhoneNumber")
    country, stamp = info.get("countryCode"), watermark.get("timestamp")
    # countryCode has been seen both as a string and as a number.
    if (
        not isinstance(number, str)
        or not isinstance(pure, str)
        or not isinstance(country, str | int)
        or not isinstance(stamp, int)
    ):
        raise WeChatBadResponse("getuserphonenumber answered a malformed phone_info")
    return PhoneNumber(number, pure, str(country), stamp)

"""The control API of the identity side: mini-program logins and web-login users.

Each route mirrors a `WeChatSimulator` method (see `server.py`), for tests and tools in
other processes (the benchmark, a team's own integration tests). Errors are HTTP
statuses with `{"error": ...}` like the rest of `/_sim/`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from wxplatform.sim.control import (
    ControlError,
    ControlHandler,
    control_errors,
    flag_field,
    int_field,
    text_field,
)

if TYPE_CHECKING:
    from wxplatform.sim.server import WeChatSimulator

__all__ = ["identity_control_routes"]

_MAX_CODES = 100_000


class LoginCodesHandler(ControlHandler):
    """`POST /_sim/mini_program/login_codes`: `wx.login` codes for a user.

    Body: app_id, openid, optional unionid and count (default 1). Answers `{"codes": […]}`.
    """

    def post(self) -> None:
        data = self.body_object()
        app_id, openid = text_field(data, "app_id"), text_field(data, "openid")
        unionid = data.get("unionid") or ""
        count = int_field(data, "count", 1) or 1
        if not 1 <= count <= _MAX_CODES or not isinstance(unionid, str):
            raise ControlError(400, f"count must be 1-{_MAX_CODES}; unionid a string")
        with control_errors():
            codes = [self.sim.login_code(app_id, openid, unionid) for _ in range(count)]
        self.send({"codes": codes}, 201)


class PhoneCodesHandler(ControlHandler):
    """`POST /_sim/mini_program/phone_codes`: body app_id, phone_number, country_code."""

    def post(self) -> None:
        data = self.body_object()
        app_id, number = text_field(data, "app_id"), text_field(data, "phone_number")
        country = data.get("country_code") or "86"
        if not isinstance(country, str):
            raise ControlError(400, "country_code must be a string")
        with control_errors():
            self.send({"code": self.sim.phone_code(app_id, number, country)}, 201)


class UserDataHandler(ControlHandler):
    """`POST /_sim/mini_program/user_data`: body app_id, openid, data (an object).

    Answers encrypted_data, iv, raw_data and signature, made with the user's current
    session key (the user must have logged in)."""

    def post(self) -> None:
        data = self.body_object()
        app_id, openid = text_field(data, "app_id"), text_field(data, "openid")
        payload = data.get("data")
        if not isinstance(payload, dict):
            raise ControlError(400, "data must be an object")
        with control_errors():
            self.send(asdict(self.sim.user_data(app_id, openid, payload)))


class BlockLoginHandler(ControlHandler):
    """`POST /_sim/mini_program/block`: body app_id, openid (logins then answer 40226)."""

    def post(self) -> None:
        data = self.body_object()
        with control_errors():
            self.sim.block_login(text_field(data, "app_id"), text_field(data, "openid"))
        self.send({"blocked": True})


class ProfilesHandler(ControlHandler):
    """`POST /_sim/oauth/profiles`: body app_id, openid, and optional nickname,
    head_image_url, unionid, snapshot, browser (make it the consent page's user)."""

    def post(self) -> None:
        data = self.body_object()
        app_id, openid = text_field(data, "app_id"), text_field(data, "openid")
        fields: dict[str, Any] = {}
        for name in ("nickname", "head_image_url", "unionid"):
            if data.get(name) is not None:
                fields[name] = text_field(data, name)
        if (snapshot := flag_field(data, "snapshot")) is not None:
            fields["snapshot"] = snapshot
        with control_errors():
            profile = self.sim.set_profile(app_id, openid, **fields)
            if flag_field(data, "browser"):
                self.sim.set_browser_user(app_id, openid)
        self.send(profile)


def identity_control_routes(
    sim: WeChatSimulator,
) -> list[tuple[str, type[ControlHandler], dict[str, Any]]]:
    """The URL table of the identity control API."""
    kwargs = {"sim": sim}
    return [
        (r"/_sim/mini_program/login_codes", LoginCodesHandler, kwargs),
        (r"/_sim/mini_program/phone_codes", PhoneCodesHandler, kwargs),
        (r"/_sim/mini_program/user_data", UserDataHandler, kwargs),
        (r"/_sim/mini_program/block", BlockLoginHandler, kwargs),
        (r"/_sim/oauth/profiles", ProfilesHandler, kwargs),
    ]

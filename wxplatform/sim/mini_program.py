"""The mini-program endpoints of the simulated WeChat: login and phone numbers.

They answer from the simulator's `LoginBook` (sim/logins.py), as WeChat does
(docs/wechat.md §5.6, §5.11).
"""

from __future__ import annotations

import hmac

from wxplatform.sim.api import ApiHandler, requires_access_token
from wxplatform.sim.errors import ApiError
from wxplatform.sim.tokens import Caller

__all__ = ["Code2SessionHandler", "PhoneNumberHandler"]


class Code2SessionHandler(ApiHandler):
    """`GET /sns/jscode2session?appid=&secret=&js_code=&grant_type=authorization_code`."""

    async def get(self) -> None:
        arg = self.get_query_argument
        if arg("grant_type", "") != "authorization_code":
            raise ApiError(40002)
        appid, secret = arg("appid", "") or "", arg("secret", "") or ""
        app = self.state.apps.get(appid)
        if app is None or app.kind != "mini_program":
            raise ApiError(40013)
        if not hmac.compare_digest(secret.encode(), app.app_secret.reveal().encode()):
            raise ApiError(40125)
        js_code = arg("js_code", "") or ""
        if not js_code:
            raise ApiError(41008)
        self.send_json(self.state.logins.exchange_login(appid, js_code))


class PhoneNumberHandler(ApiHandler):
    """`POST /wxa/business/getuserphonenumber?access_token=` with `{"code": …}`."""

    @requires_access_token
    async def post(self, caller: Caller) -> None:
        code = self.json_body().get("code")
        if not isinstance(code, str) or not code:
            raise ApiError(40029)
        info = self.state.logins.exchange_phone(caller.app_id, code)
        self.send_json({"errcode": 0, "errmsg": "ok", "phone_info": info})

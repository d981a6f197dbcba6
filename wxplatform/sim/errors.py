"""WeChat's API error shape: errcodes, their usual texts, and the `rid` suffix.

Every API error WeChat returns is HTTP 200 with `{"errcode": N, "errmsg": "... rid: X"}`
(docs/wechat.md §5, §6). The simulator raises `ApiError` anywhere in a handler and the
handler base turns it into that body.
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = [
    "ERRMSG",
    "ApiError",
    "CallbackAlreadySent",
    "ClockNotAdjustable",
    "error_body",
    "new_rid",
]

# errmsg texts as WeChat sends them (docs/wechat.md §6); the simulator appends " rid: …".
ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40029: "invalid code",
    40030: "invalid refresh_token",
    40033: "invalid charset",
    40037: "invalid template_id",
    40066: "invalid url",
    40097: "invalid args",
    40125: "invalid appsecret",
    40163: "code been used",
    40164: "invalid ip, not in whitelist",
    40226: "code blocked",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    42001: "access_token expired",
    42002: "refresh_token expired",
    42003: "oauth_code expired",
    43004: "require subscribe",
    43019: "require remove blacklist",
    43101: "user refuse to accept the msg",
    44002: "empty post data",
    44003: "empty news data",
    44004: "empty content",
    45008: "article size out of limit",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    45065: "clientmsgid exist",
    45067: "clientmsgid size out of limit",
    47001: "data format error",
    47003: "argument invalid!",
    48001: "api unauthorized",
    48004: "api forbidden for irregularities",
}


def new_rid() -> str:
    """A request id like the one WeChat appends to every errmsg (24 hex digits)."""
    return secrets.token_hex(12)


def error_body(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    """The JSON body WeChat sends for `errcode`, with a fresh rid."""
    text = errmsg if errmsg is not None else ERRMSG.get(errcode, "unknown error")
    return {"errcode": errcode, "errmsg": f"{text} rid: {new_rid()}"}


class ApiError(Exception):
    """Raised inside an API handler: answer with WeChat's error body for `errcode`.

    The message is the errcode and its public text only; it never carries request data,
    so it is safe to log.
    """

    def __init__(self, errcode: int, errmsg: str | None = None) -> None:
        self.errcode = errcode
        self.errmsg = errmsg if errmsg is not None else ERRMSG.get(errcode, "unknown error")
        super().__init__(f"{errcode} {self.errmsg}")


class ClockNotAdjustable(RuntimeError):
    """The simulator runs on a real clock, which cannot be advanced."""


class CallbackAlreadySent(RuntimeError):
    """A template job's result can no longer be forced: its event was already built."""

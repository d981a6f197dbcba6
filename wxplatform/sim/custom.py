"""Customer-service sends of the simulated WeChat: `/cgi-bin/message/custom/send` (§5.3).

The message type must be one the app's kind may send (40008), its payload must carry
the fields WeChat needs (44002, 44003, 44004, 40007, 45008), and the user must have an
open window with quota left (45015, 45047) — windows come from the interactions the
simulator pushed (`windows.py`).
"""

from __future__ import annotations

import re
from typing import Any

from wxplatform.config import AppKind
from wxplatform.sim.api import ApiHandler, requires_access_token
from wxplatform.sim.errors import ApiError
from wxplatform.sim.outbox import SentMessage
from wxplatform.sim.sends import known_user, read_body, text_field
from wxplatform.sim.tokens import Caller

__all__ = ["MP_TYPES", "OA_TYPES", "CustomSendHandler", "check_payload"]

OA_TYPES = frozenset(
    {
        "text",
        "image",
        "voice",
        "video",
        "music",
        "news",
        "mpnews",
        "mpnewsarticle",
        "msgmenu",
        "wxcard",
        "miniprogrampage",
    }
)
MP_TYPES = frozenset({"text", "image", "link", "miniprogrampage"})

# String fields of each payload, and for the required ones the errcode WeChat gives
# when they are missing or empty. Media ids get 40007 "invalid media_id", text 44004
# "empty content", anything else 44002 "empty post data".
_FIELDS: dict[str, dict[str, int | None]] = {
    "text": {"content": 44004},
    "image": {"media_id": 40007},
    "voice": {"media_id": 40007},
    "mpnews": {"media_id": 40007},
    "video": {"media_id": 40007, "thumb_media_id": 40007, "title": None, "description": None},
    "music": {
        "title": None,
        "description": None,
        "musicurl": None,
        "hqmusicurl": None,
        "thumb_media_id": 40007,
    },
    "mpnewsarticle": {"article_id": 44002},
    "wxcard": {"card_id": 44002},
    "miniprogrampage": {"title": 44002, "pagepath": 44002, "thumb_media_id": 40007},
    "link": {"title": 44002, "description": None, "url": 44002, "thumb_url": None},
}
_ARTICLE_FIELDS = ("title", "description", "url", "picurl")
_KF_ACCOUNT = re.compile(r"[^@\s]+@[^@\s]+")


def _strings(payload: dict[str, Any], fields: dict[str, int | None]) -> None:
    for name, errcode in fields.items():
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(47001)
        if errcode is not None and not value:
            raise ApiError(errcode)


def _news(payload: dict[str, Any]) -> None:
    articles = payload.get("articles")
    if articles is not None and not isinstance(articles, list):
        raise ApiError(47001)
    if not articles:
        raise ApiError(44003)
    # Once 8 articles; since 2018 WeChat takes one external-link article (§5.3).
    if len(articles) > 1:
        raise ApiError(45008)
    for article in articles:
        if not isinstance(article, dict):
            raise ApiError(47001)
        _strings(article, dict.fromkeys(_ARTICLE_FIELDS))
        if not article.get("title") and not article.get("url"):
            raise ApiError(44003)


def _msgmenu(payload: dict[str, Any]) -> None:
    _strings(payload, {"head_content": None, "tail_content": None})
    options = payload.get("list")
    if options is not None and not isinstance(options, list):
        raise ApiError(47001)
    if not options:
        raise ApiError(44002)
    for option in options:
        if not isinstance(option, dict):
            raise ApiError(47001)
        _strings(option, {"id": 44002, "content": 44002})


def check_payload(kind: AppKind, msgtype: str, payload: Any) -> None:
    """Refuse a payload WeChat would refuse for `msgtype` sent by an app of `kind`."""
    if payload is None:
        raise ApiError(44002)
    if not isinstance(payload, dict):
        raise ApiError(47001)
    if msgtype == "news":
        _news(payload)
    elif msgtype == "msgmenu":
        _msgmenu(payload)
    else:
        fields = dict(_FIELDS[msgtype])
        if msgtype == "miniprogrampage" and kind == "official_account":
            # An account must name the (linked) mini program; a mini program's own
            # customer service leaves appid out (§5.3).
            fields["appid"] = 44002
        _strings(payload, fields)


class CustomSendHandler(ApiHandler):
    """`POST /cgi-bin/message/custom/send`: customer-service messages, inside a window."""

    @requires_access_token
    async def post(self, caller: Caller) -> None:
        """Check the message, use one unit of the user's window, answer ok."""
        body = read_body(self)
        app, state = caller.app, self.state
        openid = text_field(body, "touser")
        if not openid:
            raise ApiError(40003)
        msgtype = text_field(body, "msgtype")
        allowed = OA_TYPES if app.kind == "official_account" else MP_TYPES
        if msgtype not in allowed:
            raise ApiError(40008)
        check_payload(app.kind, msgtype, body.get(msgtype))
        service = body.get("customservice")
        if service is not None:
            if not isinstance(service, dict):
                raise ApiError(47001)
            account = text_field(service, "kf_account")
            if not _KF_ACCOUNT.fullmatch(account):
                raise ApiError(40097, "invalid args")
        user = known_user(state, app.app_id, openid)
        if app.kind == "official_account" and not user.follows:
            # Same code as a closed window: "... or subscription is canceled".
            raise ApiError(45015)
        now = state.clock.now()
        state.audience.windows.consume(app.app_id, openid, now)
        state.outbox.record(SentMessage(app.app_id, self.request.path, openid, body, None, now))
        self.send_json({"errcode": 0, "errmsg": "ok"})

"""What each send looks like on the wire: validation and WeChat request bodies.

Pure functions from the API's request messages to WeChat's JSON (docs/wechat.md §5.2–5.4),
checked before any WeChat call so that bad input costs no quota and says exactly which
field is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from acme.wxplatform.v1 import messaging_service_pb2 as pb
from wxplatform.config import AppConfig
from wxplatform.core.services.checks import Checks
from wxplatform.errors import AppKindMismatch

__all__ = [
    "Outbound",
    "customer_send",
    "subscribe_send",
    "template_send",
]

_DATA_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
_MAX_VALUE = 200  # longer values are refused by WeChat with 47003 anyway
_LANGS = ("zh_CN", "en_US", "zh_HK", "zh_TW")
_STATES = {
    pb.MINI_PROGRAM_STATE_UNSPECIFIED: "",
    pb.MINI_PROGRAM_STATE_DEVELOPER: "developer",
    pb.MINI_PROGRAM_STATE_TRIAL: "trial",
    pb.MINI_PROGRAM_STATE_FORMAL: "formal",
}
# Customer-service message types each kind of app may send (docs/wechat.md §5.3).
_OA_TYPES = {
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
_MP_TYPES = {"text", "image", "link", "miniprogrampage"}


@dataclass(frozen=True)
class Outbound:
    """One WeChat send: the API path and JSON body, and what the delivery record shows."""

    api: str
    body: dict[str, Any]
    to_user: str
    summary: str


class _Checks(Checks):
    """The checks of a send, with its template data."""

    def data(self, data: Mapping[str, pb.TemplateDataValue], *, colors: bool) -> None:
        if not data:
            self.fail("data", "must have at least one key")
        for key, item in data.items():
            if not _DATA_KEY.fullmatch(key):
                self.fail(f"data.{key}", "key must be [A-Za-z0-9_]")
            self.require(f"data.{key}.value", item.value, limit=_MAX_VALUE)
            if item.color and (not colors or not _COLOR.fullmatch(item.color)):
                self.fail(f"data.{key}.color", "must be #RRGGBB (template messages only)")


def _data(data: Mapping[str, pb.TemplateDataValue], *, colors: bool) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, item in sorted(data.items()):
        out[key] = {"value": item.value}
        if colors and item.color:
            out[key]["color"] = item.color
    return out


def template_send(app: AppConfig, request: pb.SendTemplateRequest, client_msg_id: str) -> Outbound:
    """`/cgi-bin/message/template/send` for an official account."""
    if app.kind != "official_account":
        raise AppKindMismatch("template messages are sent by official accounts")
    checks = _Checks()
    checks.idempotency_key(request.idempotency_key)
    checks.openid("to_user", request.to_user)
    checks.require("template_id", request.template_id, limit=128)
    checks.url("url", request.url)
    if request.HasField("mini_program"):
        checks.require("mini_program.app_id", request.mini_program.app_id, limit=64)
    if len(request.client_msg_id.encode()) > 64:
        checks.fail("client_msg_id", "must be at most 64 bytes")
    checks.data(request.data, colors=True)
    checks.done()
    body: dict[str, Any] = {"touser": request.to_user, "template_id": request.template_id}
    if request.url:
        body["url"] = request.url
    if request.HasField("mini_program"):
        body["miniprogram"] = {
            "appid": request.mini_program.app_id,
            "pagepath": request.mini_program.page_path,
        }
    body["client_msg_id"] = client_msg_id
    body["data"] = _data(request.data, colors=True)
    return Outbound("/cgi-bin/message/template/send", body, request.to_user, request.template_id)


def subscribe_send(app: AppConfig, request: pb.SendSubscribeMessageRequest) -> Outbound:
    """`bizsend` for an official account, `send` for a mini program."""
    checks = _Checks()
    checks.idempotency_key(request.idempotency_key)
    checks.openid("to_user", request.to_user)
    checks.require("template_id", request.template_id, limit=128)
    checks.data(request.data, colors=False)
    body: dict[str, Any] = {"touser": request.to_user, "template_id": request.template_id}
    if app.kind == "official_account":
        checks.url("page", request.page)
        if request.mini_program_state:
            checks.fail("mini_program_state", "applies to mini programs only")
        if request.lang:
            checks.fail("lang", "applies to mini programs only")
        if request.page:
            body["page"] = request.page
        if request.HasField("mini_program"):
            checks.require("mini_program.app_id", request.mini_program.app_id, limit=64)
            body["miniprogram"] = {
                "appid": request.mini_program.app_id,
                "pagepath": request.mini_program.page_path,
            }
        api = "/cgi-bin/message/subscribe/bizsend"
    else:
        if request.HasField("mini_program"):
            checks.fail("mini_program", "applies to official accounts only")
        if request.lang and request.lang not in _LANGS:
            checks.fail("lang", f"must be one of {', '.join(_LANGS)}")
        if request.mini_program_state not in _STATES:
            checks.fail("mini_program_state", "is not a known MiniProgramState")
        if request.page:
            body["page"] = request.page
        if _STATES.get(request.mini_program_state):
            body["miniprogram_state"] = _STATES[request.mini_program_state]
        if request.lang:
            body["lang"] = request.lang
        api = "/cgi-bin/message/subscribe/send"
    checks.done()
    body["data"] = _data(request.data, colors=False)
    return Outbound(api, body, request.to_user, request.template_id)


def customer_send(app: AppConfig, request: pb.SendCustomerMessageRequest) -> Outbound:
    """`/cgi-bin/message/custom/send` for any app."""
    checks = _Checks()
    checks.idempotency_key(request.idempotency_key)
    checks.openid("to_user", request.to_user)
    kind = request.WhichOneof("content")
    allowed = _OA_TYPES if app.kind == "official_account" else _MP_TYPES
    if kind is None:
        checks.fail("content", "is required")
    elif kind not in allowed:
        checks.fail(
            kind, f"is not a customer-service message type of a {app.kind.replace('_', ' ')}"
        )
    if request.kf_account and "@" not in request.kf_account:
        checks.fail("kf_account", "must look like name@account")
    payload = _customer_payload(request, kind, checks, app) if kind in allowed else {}
    checks.done()
    assert kind is not None
    body: dict[str, Any] = {"touser": request.to_user, "msgtype": kind, kind: payload}
    if request.kf_account:
        body["customservice"] = {"kf_account": request.kf_account}
    return Outbound("/cgi-bin/message/custom/send", body, request.to_user, kind)


def _customer_payload(  # noqa: PLR0912 - one branch per message type
    request: pb.SendCustomerMessageRequest, kind: str | None, checks: _Checks, app: AppConfig
) -> dict[str, Any]:
    match kind:
        case "text":
            checks.require("text.content", request.text.content, limit=2048)
            return {"content": request.text.content}
        case "image" | "voice" | "mpnews":
            media = getattr(request, kind)
            checks.require(f"{kind}.media_id", media.media_id, limit=256)
            return {"media_id": media.media_id}
        case "video":
            v = request.video
            checks.require("video.media_id", v.media_id, limit=256)
            checks.require("video.thumb_media_id", v.thumb_media_id, limit=256)
            return {
                "media_id": v.media_id,
                "thumb_media_id": v.thumb_media_id,
                "title": v.title,
                "description": v.description,
            }
        case "music":
            m = request.music
            checks.require("music.thumb_media_id", m.thumb_media_id, limit=256)
            checks.url("music.music_url", m.music_url)
            checks.url("music.hq_music_url", m.hq_music_url)
            return {
                "title": m.title,
                "description": m.description,
                "musicurl": m.music_url,
                "hqmusicurl": m.hq_music_url,
                "thumb_media_id": m.thumb_media_id,
            }
        case "news":
            articles = request.news.articles
            if len(articles) != 1:
                # WeChat accepts one external-link article in practice (45008 above it).
                checks.fail("news.articles", "must hold exactly one article")
            for i, a in enumerate(articles):
                checks.require(f"news.articles[{i}].title", a.title)
                checks.url(f"news.articles[{i}].url", a.url)
            return {
                "articles": [
                    {
                        "title": a.title,
                        "description": a.description,
                        "url": a.url,
                        "picurl": a.pic_url,
                    }
                    for a in articles
                ]
            }
        case "mpnewsarticle":
            checks.require("mpnewsarticle.article_id", request.mpnewsarticle.article_id, limit=256)
            return {"article_id": request.mpnewsarticle.article_id}
        case "msgmenu":
            menu = request.msgmenu
            if not menu.options:
                checks.fail("msgmenu.options", "must have at least one option")
            for i, option in enumerate(menu.options):
                checks.require(f"msgmenu.options[{i}].id", option.id, limit=64)
                checks.require(f"msgmenu.options[{i}].content", option.content, limit=256)
            return {
                "head_content": menu.head_content,
                "list": [{"id": o.id, "content": o.content} for o in menu.options],
                "tail_content": menu.tail_content,
            }
        case "wxcard":
            checks.require("wxcard.card_id", request.wxcard.card_id, limit=256)
            return {"card_id": request.wxcard.card_id}
        case "miniprogrampage":
            page = request.miniprogrampage
            checks.require("miniprogrampage.title", page.title)
            checks.require("miniprogrampage.page_path", page.page_path)
            checks.require("miniprogrampage.thumb_media_id", page.thumb_media_id, limit=256)
            out = {
                "title": page.title,
                "pagepath": page.page_path,
                "thumb_media_id": page.thumb_media_id,
            }
            if app.kind == "official_account":
                # An official account must name the (linked) mini program; a mini
                # program's own customer service omits it.
                checks.require("miniprogrampage.app_id", page.app_id, limit=64)
                out["appid"] = page.app_id
            return out
        case "link":
            link = request.link
            checks.require("link.title", link.title)
            checks.url("link.url", link.url)
            checks.require("link.url", link.url)
            return {
                "title": link.title,
                "description": link.description,
                "url": link.url,
                "thumb_url": link.thumb_url,
            }
    return {}

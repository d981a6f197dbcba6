"""`PassiveReply` → the reply fields WeChat expects (docs/wechat.md §4.1)."""

from __future__ import annotations

from typing import Any

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pb

__all__ = ["reply_fields"]


def _optional(**values: str) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def reply_fields(
    reply: pb.PassiveReply, to: inbound.InboundMessage, now: int
) -> dict[str, Any] | None:
    """The `<xml>` fields of the reply to `to`, or None when there is nothing to send.

    To and From are swapped relative to the push; CreateTime is an integer.
    """
    kind = reply.WhichOneof("reply")
    if kind is None:
        return None
    head: dict[str, Any] = {
        "ToUserName": to.from_user_name,
        "FromUserName": to.to_user_name,
        "CreateTime": now,
        "MsgType": kind,
    }
    match kind:
        case "text":
            return head | {"Content": reply.text.content}
        case "image":
            return head | {"Image": {"MediaId": reply.image.media_id}}
        case "voice":
            return head | {"Voice": {"MediaId": reply.voice.media_id}}
        case "video":
            v = reply.video
            return head | {
                "Video": {"MediaId": v.media_id}
                | _optional(Title=v.title, Description=v.description)
            }
        case "music":
            m = reply.music
            body = _optional(
                Title=m.title,
                Description=m.description,
                MusicUrl=m.music_url,
                HQMusicUrl=m.hq_music_url,
            )
            return head | {"Music": body | {"ThumbMediaId": m.thumb_media_id}}
        case "news":
            items = [
                {"Title": a.title, "Description": a.description, "PicUrl": a.pic_url, "Url": a.url}
                for a in reply.news.articles
            ]
            return head | {"ArticleCount": len(items), "Articles": {"item": items}}
        case "transfer_customer_service":
            account = reply.transfer_customer_service.kf_account
            return head | ({"TransInfo": {"KfAccount": account}} if account else {})
    raise ValueError(f"unknown reply kind {kind!r}")

"""Per-app passive-reply rules: keyword rules, a subscribe welcome and a default."""

from __future__ import annotations

import msgspec

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from wxplatform.config import AppConfig, ReplySpec

__all__ = ["choose_reply", "to_passive_reply"]


def choose_reply(app: AppConfig, message: inbound.InboundMessage) -> pr.PassiveReply:
    """The passive reply the app's rules give for `message` (empty for none).

    Keyword rules apply to text messages, first match wins; the subscribe welcome to
    follow events; the default to any other user message. Events other than follow
    never get the default, or periodic LOCATION reports would each draw a reply.
    """
    body = message.WhichOneof("body")
    if body == "text":
        for rule in app.rules:
            if rule.matches(message.text.content):
                return to_passive_reply(rule.reply)
    if body == "subscribe":
        return to_passive_reply(app.subscribe_reply) if app.subscribe_reply else pr.PassiveReply()
    if message.msg_type != "event" and app.default_reply is not None:
        return to_passive_reply(app.default_reply)
    return pr.PassiveReply()


def to_passive_reply(spec: ReplySpec) -> pr.PassiveReply:
    """The proto form of a configured reply."""
    match spec.type:
        case "text":
            return pr.PassiveReply(text=pr.TextReply(content=spec.content))
        case "image":
            return pr.PassiveReply(image=pr.MediaReply(media_id=spec.media_id))
        case "voice":
            return pr.PassiveReply(voice=pr.MediaReply(media_id=spec.media_id))
        case "video":
            return pr.PassiveReply(
                video=pr.VideoReply(
                    media_id=spec.media_id, title=spec.title, description=spec.description
                )
            )
        case "music":
            return pr.PassiveReply(
                music=pr.MusicReply(
                    title=spec.title,
                    description=spec.description,
                    music_url=spec.music_url,
                    hq_music_url=spec.hq_music_url,
                    thumb_media_id=spec.thumb_media_id,
                )
            )
        case "news":
            return pr.PassiveReply(
                news=pr.NewsReply(
                    articles=[pr.NewsArticle(**msgspec.structs.asdict(a)) for a in spec.articles]
                )
            )
        case "transfer_customer_service":
            return pr.PassiveReply(
                transfer_customer_service=pr.TransferCustomerServiceReply(
                    kf_account=spec.kf_account
                )
            )

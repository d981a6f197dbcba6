"""Inbound delivery: dedup across replicas, then the app's passive reply."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import json_format

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from wxplatform.config import AppConfig
from wxplatform.core.adapters.dedup_store import DedupStore
from wxplatform.core.services.replies import choose_reply
from wxplatform.errors import AppNotFound, FieldViolation, InvalidRequest

__all__ = ["Delivered", "IngressService", "dedup_key"]


@dataclass(frozen=True)
class Delivered:
    """What core tells the edge about one delivery."""

    reply: pr.PassiveReply
    duplicate: bool
    dedup_key: str


def dedup_key(message: inbound.InboundMessage) -> str:
    """The identity of a push, stable across WeChat's retries.

    Messages carry a MsgId. Events do not; WeChat suggests FromUserName + CreateTime,
    but that collides for two real events from one user in one second, so the key
    adds a digest of every field of the push. A retry repeats the body byte for byte,
    so it still gets the same key.
    """
    if message.msg_id:
        return f"msg:{message.msg_id}"
    raw = json_format.MessageToJson(message.raw, sort_keys=True, indent=None)
    digest = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return f"evt:{message.from_user_name}:{message.create_time}:{digest}"


class IngressService:
    """Processes each inbound message once and answers every delivery alike."""

    def __init__(self, apps: Mapping[str, AppConfig], dedup: DedupStore) -> None:
        self._apps = apps
        self._dedup = dedup

    async def deliver(
        self, app_id: str, message: inbound.InboundMessage, *, wait_seconds: float
    ) -> Delivered:
        """Accept one delivery of `message` and return the reply for WeChat."""
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        if message.app_id != app_id:
            raise InvalidRequest(FieldViolation("message.app_id", "must equal app_id"))
        if not message.from_user_name or not message.msg_type:
            raise InvalidRequest(
                FieldViolation("message", "from_user_name and msg_type are required")
            )
        key = dedup_key(message)
        claim = await self._dedup.claim(app_id, key, wait_seconds=wait_seconds)
        if not claim.owned:
            return Delivered(pr.PassiveReply.FromString(claim.reply or b""), True, key)
        try:
            reply = choose_reply(app, message)
        except BaseException:
            await self._dedup.release(app_id, key)
            raise
        await self._dedup.complete(app_id, key, reply.SerializeToString())
        return Delivered(reply, False, key)

"""Inbound delivery: exactly-once acceptance, reply rules, fan-out and windows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import json_format

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.ingress_store import IngressStore
from wxplatform.core.model import Accepted, ReplayCheck
from wxplatform.core.services.interactions import closes_windows, windows_opened_by
from wxplatform.core.services.replies import choose_reply
from wxplatform.errors import (
    AppKindMismatch,
    AppNotFound,
    FieldViolation,
    InvalidRequest,
    WxPlatformError,
)

__all__ = ["Delivered", "IngressService", "ResultSink", "dedup_key"]

log = logging.getLogger("wxplatform.core.ingress")


class ResultSink(Protocol):
    """Who learns about WeChat's asynchronous send results (messaging)."""

    async def record_result(self, message: inbound.InboundMessage) -> None:
        """Apply a TEMPLATESENDJOBFINISH or subscribe_msg_sent_event."""
        ...


@dataclass(frozen=True)
class Delivered:
    """What core tells the edge about one delivery."""

    reply: pr.PassiveReply
    duplicate: bool
    dedup_key: str


def dedup_key(message: inbound.InboundMessage) -> str:
    """The identity of a push, stable across WeChat's retries and spool replays.

    Messages carry a MsgId. Events do not; WeChat suggests FromUserName + CreateTime,
    but that collides for two real events from one user in one second (SDKs that use
    it silently drop real events), so the key adds a digest of every field of the
    push. A retry repeats the fields exactly, so it still gets the same key.
    """
    if message.msg_id:
        return f"msg:{message.msg_id}"
    raw = json_format.MessageToJson(message.raw, sort_keys=True, indent=None)
    digest = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return f"evt:{message.from_user_name}:{message.create_time}:{digest}"


class IngressService:
    """Processes each inbound message once and answers every delivery alike."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        store: IngressStore,
        clock: Clock,
        results: ResultSink | None = None,
    ) -> None:
        self._apps = apps
        self._store = store
        self._clock = clock
        self._results = results

    async def deliver(self, app_id: str, message: inbound.InboundMessage) -> Delivered:
        """Accept one delivery of `message` and return the reply for WeChat."""
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        if app.kind == "website":
            raise AppKindMismatch("a website app gets no callbacks")
        _validate(app_id, message)
        key = dedup_key(message)
        transport = message.transport
        replay = (
            ReplayCheck(transport.signature_timestamp, transport.nonce, transport.body_sha256)
            if transport.nonce and transport.body_sha256
            else None
        )
        # The rules are pure, so the reply is computed before acceptance and stored with
        # the dedup key in the same atomic step: every delivery gets the first's reply.
        reply = choose_reply(app, message)
        accepted = Accepted(
            message=message.SerializeToString(),
            msg_type=message.msg_type,
            event=message.event,
            openid=message.from_user_name,
            windows=windows_opened_by(app, message),
            # WeChat times the window from the interaction itself; a push replayed from
            # the edge's spool hours later must not open a window WeChat already closed.
            now_ms=int(min(self._clock.now(), message.create_time or self._clock.now()) * 1000),
            close_windows=closes_windows(app, message),
        )
        outcome = await self._store.accept(app_id, key, replay, reply.SerializeToString(), accepted)
        if self._results is not None:
            # For a duplicate too (applying a result is idempotent): the first delivery
            # may have been accepted and then lost its answer before the result was
            # applied, and this retry is the last chance to apply it.
            await self._record_result(message)
        if not outcome.new:
            return Delivered(pr.PassiveReply.FromString(outcome.reply), True, key)
        return Delivered(reply, False, key)

    async def _record_result(self, message: inbound.InboundMessage) -> None:
        """Let messaging update the delivery a result event reports on."""
        assert self._results is not None
        try:
            await self._results.record_result(message)
        except WxPlatformError:
            # The event itself is accepted and fanned out; only the record update failed.
            log.exception("could not apply a result event to its delivery record")


def _validate(app_id: str, message: inbound.InboundMessage) -> None:
    violations = []
    if message.app_id != app_id:
        violations.append(FieldViolation("message.app_id", "must equal app_id"))
    for name in ("from_user_name", "to_user_name", "msg_type"):
        if not getattr(message, name):
            violations.append(FieldViolation(f"message.{name}", "is required"))
    if violations:
        raise InvalidRequest(violations)

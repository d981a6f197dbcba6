"""Outbound messaging: exactly-once, window-aware, error-aware sends and their records."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import messaging_service_pb2 as pb
from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.message_store import MessageStore
from wxplatform.core.adapters.wechat_client import WeChatClient
from wxplatform.core.services.sends import (
    Outbound,
    customer_send,
    subscribe_send,
    template_send,
    validate_idempotency_key,
)
from wxplatform.core.services.tokens import TokenService
from wxplatform.errors import (
    AppNotFound,
    DeliveryNotFound,
    FieldViolation,
    IdempotencyKeyReused,
    IdempotentRequestInProgress,
    InvalidRequest,
    RateLimited,
    WeChatOutcomeUnknown,
    WeChatRefused,
    WindowClosed,
    WindowQuotaExhausted,
    WxPlatformError,
)
from wxplatform.wechat.errcodes import classify

__all__ = ["MessagingService"]

log = logging.getLogger("wxplatform.core.messaging")

_CLIENT_MSG_ID_EXISTS = 45065  # WeChat already sent this client_msg_id: it is a success
_DAILY_QUOTA = 45009
_BEIJING = 8 * 3600
_WAIT_START, _WAIT_CAP = 0.02, 0.2

_TEMPLATE_STATUS = {
    inbound.TEMPLATE_SEND_STATUS_SUCCESS: pb.DELIVERY_STATUS_DELIVERED,
    inbound.TEMPLATE_SEND_STATUS_USER_BLOCKED: pb.DELIVERY_STATUS_USER_BLOCKED,
    inbound.TEMPLATE_SEND_STATUS_SYSTEM_FAILED: pb.DELIVERY_STATUS_SYSTEM_FAILED,
}


def _now_pb(now: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(now * 1e9))
    return stamp


class MessagingService:
    """SendTemplate, SendCustomerMessage, SendSubscribeMessage and GetDelivery."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        store: MessageStore,
        wechat: WeChatClient,
        tokens: TokenService,
        clock: Clock,
    ) -> None:
        self._apps = apps
        self._store = store
        self._wechat = wechat
        self._tokens = tokens
        self._clock = clock

    def _app(self, app_id: str) -> AppConfig:
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        return app

    async def send_template(
        self, request: pb.SendTemplateRequest, caller: str, *, deadline: float
    ) -> pb.Delivery:
        """Send a template message once per idempotency key."""
        app = self._app(request.app_id)
        validate_idempotency_key(request.idempotency_key)
        # WeChat's own anti-replay id, derived from ours unless given: a send retried
        # after an unknown outcome is then refused by WeChat as a duplicate (45065).
        client_msg_id = (
            request.client_msg_id
            or hashlib.sha256(f"{caller}:{request.idempotency_key}".encode()).hexdigest()[:32]
        )
        outbound = template_send(app, request, client_msg_id)
        return await self._send(
            app, caller, request, outbound, pb.DELIVERY_KIND_TEMPLATE, deadline=deadline
        )

    async def send_customer(
        self, request: pb.SendCustomerMessageRequest, caller: str, *, deadline: float
    ) -> pb.Delivery:
        """Send a customer-service message inside the user's interaction window."""
        app = self._app(request.app_id)
        validate_idempotency_key(request.idempotency_key)
        outbound = customer_send(app, request)
        return await self._send(
            app,
            caller,
            request,
            outbound,
            pb.DELIVERY_KIND_CUSTOMER,
            deadline=deadline,
            window=True,
        )

    async def send_subscribe(
        self, request: pb.SendSubscribeMessageRequest, caller: str, *, deadline: float
    ) -> pb.Delivery:
        """Send a subscribe message (official account bizsend or mini program send)."""
        app = self._app(request.app_id)
        validate_idempotency_key(request.idempotency_key)
        outbound = subscribe_send(app, request)
        return await self._send(
            app, caller, request, outbound, pb.DELIVERY_KIND_SUBSCRIBE, deadline=deadline
        )

    async def get_delivery(self, app_id: str, delivery_id: str) -> pb.Delivery:
        """A delivery record."""
        self._app(app_id)
        if not delivery_id:
            raise InvalidRequest(FieldViolation("delivery_id", "is required"))
        record = await self._store.record(app_id, delivery_id)
        if record is None:
            raise DeliveryNotFound(f"no delivery {delivery_id!r}")
        return pb.Delivery.FromString(record)

    async def record_result(self, message: inbound.InboundMessage) -> None:
        """Apply WeChat's asynchronous result event to the delivery it reports on."""
        if message.HasField("template_send_job_finish"):
            finish = message.template_send_job_finish
            updates = [
                (
                    finish.msg_id,
                    _TEMPLATE_STATUS.get(finish.status, pb.DELIVERY_STATUS_UNSPECIFIED),
                    0,
                    finish.status_text,
                )
            ]
        elif message.HasField("subscribe_message_sent"):
            updates = [
                (
                    item.msg_id,
                    pb.DELIVERY_STATUS_DELIVERED
                    if item.error_code == 0
                    else pb.DELIVERY_STATUS_REJECTED,
                    item.error_code,
                    item.error_status,
                )
                for item in message.subscribe_message_sent.items
            ]
        else:
            return
        for msgid, status, errcode, text in updates:
            found = await self._store.record_by_msgid(message.app_id, msgid) if msgid else None
            if found is None or status == pb.DELIVERY_STATUS_UNSPECIFIED:
                continue
            delivery_id, raw = found
            delivery = pb.Delivery.FromString(raw)
            delivery.status = status
            delivery.errcode = errcode
            delivery.errmsg = text
            delivery.update_time.CopyFrom(_now_pb(self._clock.now()))
            await self._store.update_record(
                message.app_id, delivery_id, delivery.SerializeToString()
            )

    async def _send(
        self,
        app: AppConfig,
        caller: str,
        request: Message,
        outbound: Outbound,
        kind: pb.DeliveryKind.ValueType,
        *,
        deadline: float,
        window: bool = False,
    ) -> pb.Delivery:
        key = request.idempotency_key  # type: ignore[attr-defined]
        idem = self._store.idempotency_key(
            app.app_id, caller, hashlib.sha256(key.encode()).hexdigest()[:40]
        )
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        delivery_id = "d" + secrets.token_hex(12)
        now = self._clock.now()
        openid = outbound.to_user if window else None
        begun = await self._store.begin(
            app.app_id,
            idem,
            digest=digest,
            delivery_id=delivery_id,
            api=outbound.api,
            rate_limit=app.send_rate_per_second,
            window_openid=openid,
            now_ms=int(now * 1000),
        )
        match begun.state:
            case "done":
                return await self._replay(app, begun.delivery_id)
            case "pending":
                return await self._await_first(app, idem, digest, begun.delivery_id, deadline)
            case "reused":
                raise IdempotencyKeyReused("idempotency key was used with a different request")
            case "circuit":
                raise WeChatRefused(
                    "WECHAT_DAILY_QUOTA_EXHAUSTED",
                    _DAILY_QUOTA,
                    "daily quota reached earlier today",
                    "",
                    retry_after=begun.wait_ms / 1000,
                )
            case "rate":
                raise RateLimited(
                    f"over {app.send_rate_per_second} sends per second for this app",
                    retry_after=max(begun.wait_ms, 1) / 1000,
                )
            case "closed":
                raise WindowClosed("the user has no open customer-service window")
            case "exhausted":
                raise WindowQuotaExhausted("the user's customer-service windows have no quota left")
        delivery = pb.Delivery(
            delivery_id=delivery_id,
            app_id=app.app_id,
            kind=kind,
            to_user=outbound.to_user,
            summary=outbound.summary,
            status=pb.DELIVERY_STATUS_PENDING,
            caller=caller,
            idempotency_key=key,
        )
        delivery.create_time.CopyFrom(_now_pb(now))
        # Shielded: once WeChat may have been called, the outcome must be recorded even
        # if the caller gives up, or a retry with the same key could send twice.
        return await asyncio.shield(
            self._deliver(
                app,
                outbound,
                delivery,
                idem=idem,
                digest=digest,
                openid=openid,
                window=begun.window,
                deadline=deadline,
            )
        )

    async def _deliver(
        self,
        app: AppConfig,
        outbound: Outbound,
        delivery: pb.Delivery,
        *,
        idem: str,
        digest: str,
        openid: str | None,
        window: str,
        deadline: float,
    ) -> pb.Delivery:
        async def call(token: str) -> dict[str, Any]:
            return await self._wechat.post(
                outbound.api,
                {"access_token": token},
                outbound.body,
                deadline=deadline,
                # Safe to resend only when WeChat deduplicates it (client_msg_id, 45065).
                idempotent="client_msg_id" in outbound.body,
                is_send=True,
            )

        failure: WxPlatformError | None = None
        refund = ""
        try:
            data = await self._tokens.with_token(app, call, deadline=deadline)
            delivery.status = pb.DELIVERY_STATUS_SENT
            delivery.wechat_msg_id = str(data.get("msgid", "") or "")
        except WeChatRefused as exc:
            if exc.errcode == _CLIENT_MSG_ID_EXISTS:
                delivery.status = pb.DELIVERY_STATUS_SENT  # sent before, under the same id
                delivery.errmsg = exc.errmsg
            else:
                failure, refund = exc, window
                delivery.status = pb.DELIVERY_STATUS_REJECTED
                delivery.errcode, delivery.errmsg = exc.errcode, exc.errmsg
                if exc.errcode == _DAILY_QUOTA:
                    try:
                        await self._trip(app, outbound.api)
                    except WxPlatformError:  # the record matters more than the circuit
                        log.exception("could not open the daily-quota circuit")
        except WeChatOutcomeUnknown as exc:
            failure = exc
            delivery.status = pb.DELIVERY_STATUS_UNKNOWN
            delivery.errmsg = exc.message
        except WxPlatformError:
            # Nothing reached WeChat (unreachable, -1 until the deadline, token
            # unavailable, store down): forget the claim so a retry with the key may send.
            await self._store.release(
                app.app_id,
                idem,
                digest=digest,
                delivery_id=delivery.delivery_id,
                window_openid=openid,
                window=window,
            )
            raise
        except Exception:
            # A bug, after WeChat may have been called: record the outcome as unknown so
            # a retry with the same key cannot send twice, then let the error surface.
            log.exception("unexpected error during a send")
            delivery.status = pb.DELIVERY_STATUS_UNKNOWN
            await self._store.finish(
                app.app_id,
                idem,
                digest=digest,
                delivery_id=delivery.delivery_id,
                record=delivery.SerializeToString(),
                msgid="",
                window_openid=openid,
                refund="",
            )
            raise
        delivery.update_time.CopyFrom(_now_pb(self._clock.now()))
        await self._store.finish(
            app.app_id,
            idem,
            digest=digest,
            delivery_id=delivery.delivery_id,
            record=delivery.SerializeToString(),
            msgid=delivery.wechat_msg_id,
            window_openid=openid,
            refund=refund,
        )
        log.info(
            "sent" if failure is None else "send failed",
            extra={
                "app_id": app.app_id,
                "delivery_id": delivery.delivery_id,
                "api": outbound.api,
                "errcode": delivery.errcode,
            },
        )
        if failure is not None:
            raise failure
        return delivery

    async def _trip(self, app: AppConfig, api: str) -> None:
        """45009: stop calling this API for the app until WeChat's daily reset."""
        now = self._clock.now()
        next_midnight = ((now + _BEIJING) // 86400 + 1) * 86400 - _BEIJING
        await self._store.trip_circuit(app.app_id, api, int(next_midnight * 1000), int(now * 1000))
        log.warning(
            "daily quota exhausted; circuit open until the daily reset",
            extra={"app_id": app.app_id, "api": api},
        )

    async def _replay(self, app: AppConfig, delivery_id: str) -> pb.Delivery:
        """The original outcome of a completed request with this key: result or error."""
        delivery = await self.get_delivery(app.app_id, delivery_id)
        if delivery.status == pb.DELIVERY_STATUS_REJECTED:
            kind = classify(delivery.errcode)
            raise WeChatRefused(kind.reason, delivery.errcode, delivery.errmsg, "")
        if delivery.status == pb.DELIVERY_STATUS_UNKNOWN:
            raise WeChatOutcomeUnknown(delivery.errmsg or "outcome unknown")
        return delivery

    async def _await_first(
        self, app: AppConfig, idem: str, digest: str, delivery_id: str, deadline: float
    ) -> pb.Delivery:
        """A duplicate of a request still in flight: wait for its outcome, not a second send."""
        pause = _WAIT_START
        while time.monotonic() + pause < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WAIT_CAP)
            if await self._store.record(app.app_id, delivery_id) is not None:
                return await self._replay(app, delivery_id)
        raise IdempotentRequestInProgress("a request with this idempotency key is still in flight")

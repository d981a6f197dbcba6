"""Outbound messaging: exactly-once, window-aware, error-aware sends and their records."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import messaging_service_pb2 as pb
from wxplatform.background import Background
from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.message_store import Begun, MessageStore, SendResult
from wxplatform.core.adapters.wechat_client import WeChatClient
from wxplatform.core.services.sends import (
    Outbound,
    customer_send,
    subscribe_send,
    template_send,
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
    quoted,
)
from wxplatform.wechat.daily import next_reset
from wxplatform.wechat.errcodes import classify

__all__ = ["MessagingService"]

log = logging.getLogger("wxplatform.core.messaging")

_DELIVERY_ID = re.compile(r"d[0-9a-f]{24}")  # "d" + secrets.token_hex(12), as `_send` makes
_CLIENT_MSG_ID_EXISTS = 45065  # WeChat already sent this client_msg_id: it is a success
_DAILY_QUOTA = 45009
_RATE_LIMIT = 45011
_QUOTA_REFUSALS = frozenset({_DAILY_QUOTA, _RATE_LIMIT})  # WeChat did not act on the message
_WINDOW_REFUSALS = frozenset({45015, 45047})  # window closed; window quota used up
_WAIT_START, _WAIT_CAP = 0.02, 0.2
# Compare-and-set attempts for one result. Only result events write a stored record,
# and WeChat reports once per msgid, so a conflict is a rare duplicate of the same event.
_RESULT_ATTEMPTS = 5

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
        *,
        background: Background,
    ) -> None:
        self._apps = apps
        self._background = background
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
        outbound = subscribe_send(app, request)
        return await self._send(
            app, caller, request, outbound, pb.DELIVERY_KIND_SUBSCRIBE, deadline=deadline
        )

    async def get_delivery(self, app_id: str, delivery_id: str) -> pb.Delivery:
        """A delivery record."""
        self._app(app_id)
        if not delivery_id:
            raise InvalidRequest(FieldViolation("delivery_id", "is required"))
        # Only ids this service made name a record (others could name another key).
        record = (
            await self._store.record(app_id, delivery_id)
            if _DELIVERY_ID.fullmatch(delivery_id)
            else None
        )
        if record is None:
            raise DeliveryNotFound(f"no delivery {quoted(delivery_id)}")
        return pb.Delivery.FromString(record)

    async def record_result(self, message: inbound.InboundMessage) -> None:
        """Apply WeChat's asynchronous result event to the delivery it reports on.

        Idempotent: an event applied again (a retry, a spool replay) changes nothing. An
        event that overtakes our own `finish` is parked in the store and applied when
        the send finishes; one for a msgid we never sent is parked and expires.
        """
        for msgid, result in _results(message):
            delivery_id = await self._store.locate_or_park(message.app_id, msgid, result)
            if delivery_id is None:
                continue  # parked: `finish` of that send takes it
            raw = await self._store.record(message.app_id, delivery_id)
            await self._apply_result(message.app_id, delivery_id, raw, result)

    async def _apply_result(
        self, app_id: str, delivery_id: str, raw: bytes | None, result: SendResult
    ) -> pb.Delivery | None:
        """Write `result` into the record `raw` read from the store; the record as stored.

        A compare-and-set, re-read on conflict: a concurrent writer is never overwritten
        with a stale copy, and an expired record (None) is never written back.
        """
        for _ in range(_RESULT_ATTEMPTS):
            if raw is None:
                return None
            delivery = pb.Delivery.FromString(raw)
            if _carries(delivery, result):
                return delivery  # applied already: the same event again changes nothing
            delivery.status = cast(pb.DeliveryStatus.ValueType, result.status)
            delivery.errcode = result.errcode
            delivery.errmsg = result.errmsg
            delivery.update_time.CopyFrom(_now_pb(self._clock.now()))
            replaced, raw = await self._store.replace_record(
                app_id, delivery_id, raw, delivery.SerializeToString()
            )
            if replaced:
                return delivery
        log.warning(
            "gave up applying a result event: the record kept changing",
            extra={"app_id": app_id, "delivery_id": delivery_id},
        )
        return None

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

        async def begin() -> Begun:
            return await self._store.begin(
                app.app_id,
                idem,
                digest=digest,
                delivery_id=delivery_id,
                api=outbound.api,
                rate_limit=app.send_rate_per_second,
                window_openid=openid,
                now_ms=int(self._clock.now() * 1000),
            )

        begun = await begin()
        if begun.state == "pending":
            begun = await self._await_first(idem, digest, begin, deadline)
        match begun.state:
            case "done":
                return await self._replay(app, begun.delivery_id)
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
        return await self._background.shielded(
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
        judged: list[WeChatRefused] = []  # refusals of the message itself, not its token

        async def call(token: str) -> dict[str, Any]:
            try:
                return await self._wechat.post(
                    outbound.api,
                    {"access_token": token},
                    outbound.body,
                    deadline=deadline,
                    # Safe to resend only when WeChat deduplicates it (client_msg_id, 45065).
                    idempotent="client_msg_id" in outbound.body,
                    is_send=True,
                )
            except WeChatRefused as exc:
                if classify(exc.errcode).retry != "token":
                    judged.append(exc)
                raise

        failure: WxPlatformError | None = None
        refund = ""
        try:
            data = await self._tokens.with_token(app, call, deadline=deadline)
            delivery.status = pb.DELIVERY_STATUS_SENT
            delivery.wechat_msg_id = str(data.get("msgid", "") or "")
        except WeChatRefused as exc:
            if not any(exc is refusal for refusal in judged):
                # No token to send with (the app's credentials refused, a rejected token
                # and no replacement): WeChat never judged the message, so the key is
                # released and a retry after the fix may send it.
                await self._release(
                    app, idem, digest=digest, delivery=delivery, openid=openid, window=window
                )
                raise
            if exc.errcode == _DAILY_QUOTA:
                await self._trip(app, outbound.api, exc)
            if exc.errcode in _QUOTA_REFUSALS and not exc.after_possible_send:
                # WeChat refused the call, not the message, and did not act: the key is
                # released (as for our own rate limit) so a retry after RetryInfo sends.
                await self._release(
                    app, idem, digest=digest, delivery=delivery, openid=openid, window=window
                )
                raise exc from None
            if exc.errcode in _QUOTA_REFUSALS:
                # An earlier attempt may have been delivered, and WeChat's duplicate check
                # (client_msg_id) lasts 10 minutes: the outcome is unknown, never resent.
                failure = WeChatOutcomeUnknown(
                    f"an earlier attempt may have reached WeChat; then {exc.errcode} {exc.errmsg}"
                )
                delivery.status = pb.DELIVERY_STATUS_UNKNOWN
                delivery.errmsg = failure.message
            else:
                failure, refund = _judged(delivery, exc, window)
        except WeChatOutcomeUnknown as exc:
            failure = exc
            delivery.status = pb.DELIVERY_STATUS_UNKNOWN
            delivery.errmsg = exc.message
        except WxPlatformError:
            # Nothing reached WeChat (unreachable, -1 until the deadline, token
            # unavailable, store down): forget the claim so a retry with the key may send.
            await self._release(
                app, idem, digest=digest, delivery=delivery, openid=openid, window=window
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
        record = delivery.SerializeToString()
        early = await self._store.finish(
            app.app_id,
            idem,
            digest=digest,
            delivery_id=delivery.delivery_id,
            record=record,
            msgid=delivery.wechat_msg_id,
            window_openid=openid,
            refund=refund,
        )
        if early is not None:
            delivery = await self._apply_early(app, delivery, record, early)
        # Successes are counted by metrics and logged at DEBUG, failures at INFO.
        log.log(
            logging.DEBUG if failure is None else logging.INFO,
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

    async def _release(
        self,
        app: AppConfig,
        idem: str,
        *,
        digest: str,
        delivery: pb.Delivery,
        openid: str | None,
        window: str,
    ) -> None:
        """Forget the claim of a message WeChat certainly did not act on."""
        await self._store.release(
            app.app_id,
            idem,
            digest=digest,
            delivery_id=delivery.delivery_id,
            window_openid=openid,
            window=window,
        )

    async def _apply_early(
        self, app: AppConfig, delivery: pb.Delivery, record: bytes, early: SendResult
    ) -> pb.Delivery:
        """WeChat reported the result before our `finish`: apply it now (a third round trip).

        The send itself succeeded and is recorded; failing to apply the result must not
        turn it into an error for the caller, so the SENT record is returned then.
        """
        try:
            applied = await self._apply_result(app.app_id, delivery.delivery_id, record, early)
        except WxPlatformError:
            log.exception(
                "could not apply an early result event",
                extra={"app_id": app.app_id, "delivery_id": delivery.delivery_id},
            )
            return delivery
        return applied if applied is not None else delivery

    async def _trip(self, app: AppConfig, api: str, refusal: WeChatRefused) -> None:
        """45009: stop calling this API for the app until WeChat's daily reset.

        The refusal's RetryInfo delay then ends at the reset.
        """
        now = self._clock.now()
        next_midnight = next_reset(now)
        try:
            await self._store.trip_circuit(
                app.app_id, api, int(next_midnight * 1000), int(now * 1000)
            )
        except WxPlatformError:  # the caller's answer matters more than the circuit
            log.exception("could not open the daily-quota circuit")
        else:
            log.warning(
                "daily quota exhausted; circuit open until the daily reset",
                extra={"app_id": app.app_id, "api": api},
            )
        refusal.retry_after = max(next_midnight - now, 1.0)

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
        self, idem: str, digest: str, begin: Callable[[], Awaitable[Begun]], deadline: float
    ) -> Begun:
        """A duplicate of a request still in flight: wait for its outcome, not a second send.

        Watches the idempotency key rather than the record: a first request that fails
        before reaching WeChat releases its claim and never writes a record. The key
        then is free, and this request claims it (`begin` lets one claimant through)
        and sends itself. Returns the first verdict other than `pending`.
        """
        pause = _WAIT_START
        while time.monotonic() + pause < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WAIT_CAP)
            held = await self._store.peek(idem, digest)
            if held.state == "free":
                held = await begin()  # `pending` again if another duplicate won the claim
            if held.state != "pending":
                return held
        raise IdempotentRequestInProgress("a request with this idempotency key is still in flight")


def _judged(
    delivery: pb.Delivery, refusal: WeChatRefused, window: str
) -> tuple[WeChatRefused | None, str]:
    """Record WeChat's verdict on the message; returns (the caller's error, unit to refund).

    45065 is a success (sent before under the same client_msg_id). Otherwise the window
    unit goes back, unless WeChat says the window is closed or used up: then core's count
    was behind WeChat's, and keeping the unit spent stops calls WeChat would refuse alike.
    """
    if refusal.errcode == _CLIENT_MSG_ID_EXISTS:
        delivery.status = pb.DELIVERY_STATUS_SENT
        delivery.errmsg = refusal.errmsg
        return None, ""
    delivery.status = pb.DELIVERY_STATUS_REJECTED
    delivery.errcode, delivery.errmsg = refusal.errcode, refusal.errmsg
    return refusal, "" if refusal.errcode in _WINDOW_REFUSALS else window


def _results(message: inbound.InboundMessage) -> Iterator[tuple[str, SendResult]]:
    """The (msgid, result) pairs a result event reports; nothing for other messages."""
    if message.HasField("template_send_job_finish"):
        finish = message.template_send_job_finish
        status = _TEMPLATE_STATUS.get(finish.status)
        if finish.msg_id and status is not None:
            yield finish.msg_id, SendResult(status, 0, finish.status_text)
    elif message.HasField("subscribe_message_sent"):
        for item in message.subscribe_message_sent.items:
            if item.msg_id:
                status = (
                    pb.DELIVERY_STATUS_DELIVERED
                    if item.error_code == 0
                    else pb.DELIVERY_STATUS_REJECTED
                )
                yield item.msg_id, SendResult(status, item.error_code, item.error_status)


def _carries(delivery: pb.Delivery, result: SendResult) -> bool:
    """Whether a record already shows this result."""
    return (delivery.status, delivery.errcode, delivery.errmsg) == (
        result.status,
        result.errcode,
        result.errmsg,
    )

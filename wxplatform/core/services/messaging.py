"""Outbound messaging: exactly-once, window-aware, error-aware sends and their records.

A send claims its idempotency key in the message store (which also checks the daily-
quota circuit, the app's rate limit and, for customer service, the user's window),
calls WeChat with the app's token, and records one verdict: sent, rejected by WeChat,
or unknown. A send WeChat certainly did not act on (no token, WeChat unreachable, a
rate or quota refusal of the call) releases its claim instead, so a retry may send.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from google.protobuf.message import Message

from acme.wxplatform.v1 import messaging_service_pb2 as pb
from wxplatform.background import Background
from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.message_store import MessageStore, is_delivery_id
from wxplatform.core.adapters.wechat_client import Call, WeChatClient
from wxplatform.core.model import Begun, Claim, ClaimState
from wxplatform.core.services.results import ResultRecorder, timestamp
from wxplatform.core.services.sends import (
    Outbound,
    customer_send,
    subscribe_send,
    template_send,
)
from wxplatform.core.services.tokens import TokenService
from wxplatform.errors import (
    AppKindMismatch,
    AppNotFound,
    CredentialsRefused,
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
from wxplatform.wechat.errcodes import DAILY_QUOTA, DUPLICATE_CLIENT_MSG_ID, classify

__all__ = ["MessagingService"]

log = logging.getLogger("wxplatform.core.messaging")

_WAIT_START, _WAIT_CAP = 0.02, 0.2
# WeChat's verdicts that the user's window is closed or used up: core's count was behind
# WeChat's, so the unit stays spent (a refund would only buy another refusal).
_WINDOW_REFUSALS = frozenset({"WINDOW_CLOSED", "WINDOW_QUOTA_EXHAUSTED"})


@dataclass(frozen=True)
class _Verdict:
    """What one send came to, as its record shows it, and the caller's error if any."""

    status: pb.DeliveryStatus.ValueType
    msgid: str = ""
    errcode: int = 0
    errmsg: str = ""
    refund: bool = False  # the message was not sent: the window unit goes back
    error: WxPlatformError | None = None


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
        self.results = ResultRecorder(store, clock)  # ingress hands it result events

    def _app(self, app_id: str) -> AppConfig:
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        if app.kind == "website":
            raise AppKindMismatch("a website app sends no messages")
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
        claim = self._claim(app, caller, request.idempotency_key, request)
        return await self._send(
            app, caller, claim, outbound, kind=pb.DELIVERY_KIND_TEMPLATE, deadline=deadline
        )

    async def send_customer(
        self, request: pb.SendCustomerMessageRequest, caller: str, *, deadline: float
    ) -> pb.Delivery:
        """Send a customer-service message inside the user's interaction window."""
        app = self._app(request.app_id)
        outbound = customer_send(app, request)
        claim = self._claim(
            app, caller, request.idempotency_key, request, window_openid=outbound.to_user
        )
        return await self._send(
            app, caller, claim, outbound, kind=pb.DELIVERY_KIND_CUSTOMER, deadline=deadline
        )

    async def send_subscribe(
        self, request: pb.SendSubscribeMessageRequest, caller: str, *, deadline: float
    ) -> pb.Delivery:
        """Send a subscribe message (official account bizsend or mini program send)."""
        app = self._app(request.app_id)
        outbound = subscribe_send(app, request)
        claim = self._claim(app, caller, request.idempotency_key, request)
        return await self._send(
            app, caller, claim, outbound, kind=pb.DELIVERY_KIND_SUBSCRIBE, deadline=deadline
        )

    async def get_delivery(self, app_id: str, delivery_id: str) -> pb.Delivery:
        """A delivery record."""
        self._app(app_id)
        if not delivery_id:
            raise InvalidRequest(FieldViolation("delivery_id", "is required"))
        # Only ids the store made name a record (others could name another key).
        record = (
            await self._store.record(app_id, delivery_id) if is_delivery_id(delivery_id) else None
        )
        if record is None:
            raise DeliveryNotFound(f"no delivery {quoted(delivery_id)}")
        return pb.Delivery.FromString(record)

    def _claim(
        self, app: AppConfig, caller: str, key: str, request: Message, *, window_openid: str = ""
    ) -> Claim:
        return self._store.claim(
            app.app_id,
            caller,
            key,
            request.SerializeToString(deterministic=True),
            window_openid=window_openid,
        )

    async def _send(
        self,
        app: AppConfig,
        caller: str,
        claim: Claim,
        outbound: Outbound,
        *,
        kind: pb.DeliveryKind.ValueType,
        deadline: float,
    ) -> pb.Delivery:
        now = self._clock.now()
        begun = await self._begin(app, claim, outbound)
        if begun.state is ClaimState.PENDING:
            begun = await self._await_first(app, claim, outbound, deadline)
        match begun.state:
            case ClaimState.GO:
                pass
            case ClaimState.DONE:
                return await self._replay(app, begun.delivery_id)
            case ClaimState.PENDING | ClaimState.FREE:  # `_await_first` returns neither
                raise IdempotentRequestInProgress("a request with this key is still in flight")
            case ClaimState.REUSED:
                raise IdempotencyKeyReused("idempotency key was used with a different request")
            case ClaimState.CIRCUIT:
                daily = classify(DAILY_QUOTA)
                raise WeChatRefused(
                    daily.reason,
                    DAILY_QUOTA,
                    "daily quota reached earlier today",
                    "",
                    retry=daily.retry,
                    retry_after=begun.wait_ms / 1000,
                )
            case ClaimState.RATE:
                raise RateLimited(
                    f"over {app.send_rate_per_second} sends per second for this app",
                    retry_after=max(begun.wait_ms, 1) / 1000,
                )
            case ClaimState.CLOSED:
                raise WindowClosed("the user has no open customer-service window")
            case ClaimState.EXHAUSTED:
                raise WindowQuotaExhausted("the user's customer-service windows have no quota left")
            case unreachable:
                assert_never(unreachable)
        delivery = pb.Delivery(
            delivery_id=claim.delivery_id,
            app_id=app.app_id,
            kind=kind,
            to_user=outbound.to_user,
            summary=outbound.summary,
            status=pb.DELIVERY_STATUS_PENDING,
            caller=caller,
            idempotency_key=claim.idempotency_key,
        )
        delivery.create_time.CopyFrom(timestamp(now))
        # Shielded: once WeChat may have been called, the outcome must be recorded even
        # if the caller gives up, or a retry with the same key could send twice.
        return await self._background.shielded(
            self._deliver(app, outbound, delivery, begun.claim, deadline)
        )

    async def _begin(self, app: AppConfig, claim: Claim, outbound: Outbound) -> Begun:
        return await self._store.begin(
            claim,
            api=outbound.api,
            rate_limit=app.send_rate_per_second,
            now_ms=int(self._clock.now() * 1000),
        )

    async def _deliver(
        self,
        app: AppConfig,
        outbound: Outbound,
        delivery: pb.Delivery,
        claim: Claim,
        deadline: float,
    ) -> pb.Delivery:
        """Call WeChat and record its verdict; the claim (holding its window unit) is
        finished or, when WeChat certainly did not act, released."""
        # Safe to resend only when WeChat deduplicates it (client_msg_id, 45065).
        kind = Call.DEDUPED_SEND if "client_msg_id" in outbound.body else Call.SEND

        async def call(token: str) -> dict[str, object]:
            return await self._wechat.post(
                outbound.api, {"access_token": token}, outbound.body, deadline=deadline, call=kind
            )

        try:
            data = await self._tokens.with_token(app, call, deadline=deadline)
        except CredentialsRefused:
            # No token to send with (the app's credentials refused): WeChat never
            # considered the message, so the key is released and a retry after the
            # fix may send it.
            await self._store.release(claim)
            raise
        except WeChatRefused as refusal:
            verdict = await self._judge(app, outbound, claim, refusal)
        except WeChatOutcomeUnknown as exc:
            verdict = _Verdict(pb.DELIVERY_STATUS_UNKNOWN, errmsg=exc.message, error=exc)
        except WxPlatformError:
            # Nothing reached WeChat (unreachable, -1 until the deadline, no usable
            # token, store down): forget the claim so a retry with the key may send.
            await self._store.release(claim)
            raise
        except Exception:
            # A bug, after WeChat may have been called: record the outcome as unknown so
            # a retry with the same key cannot send twice, then let the error surface.
            log.exception("unexpected error during a send")
            await self._record(outbound, delivery, claim, _Verdict(pb.DELIVERY_STATUS_UNKNOWN))
            raise
        else:
            msgid = str(data.get("msgid", "") or "")
            verdict = _Verdict(pb.DELIVERY_STATUS_SENT, msgid=msgid)
        recorded = await self._record(outbound, delivery, claim, verdict)
        if verdict.error is not None:
            raise verdict.error
        return recorded

    async def _judge(
        self, app: AppConfig, outbound: Outbound, claim: Claim, refusal: WeChatRefused
    ) -> _Verdict:
        """The verdict a refusal of the send amounts to; releases the claim (and raises)
        when WeChat refused the call without acting on it."""
        if refusal.errcode == DAILY_QUOTA:
            await self._trip(app, outbound.api)
        if not refusal.judges_request:  # a rate limit or quota: WeChat did not act
            if not refusal.after_possible_send:
                # Released (as for our own rate limit) so a retry after RetryInfo sends.
                await self._store.release(claim)
                raise refusal
            # An earlier attempt may have been delivered, and WeChat's duplicate check
            # (client_msg_id) lasts 10 minutes: the outcome is unknown, never resent.
            unknown = WeChatOutcomeUnknown(
                "an earlier attempt may have reached WeChat; "
                f"then {refusal.errcode} {refusal.errmsg}"
            )
            return _Verdict(pb.DELIVERY_STATUS_UNKNOWN, errmsg=unknown.message, error=unknown)
        if refusal.errcode == DUPLICATE_CLIENT_MSG_ID:  # sent before under this client_msg_id
            return _Verdict(pb.DELIVERY_STATUS_SENT, errmsg=refusal.errmsg)
        return _Verdict(
            pb.DELIVERY_STATUS_REJECTED,
            errcode=refusal.errcode,
            errmsg=refusal.errmsg,
            refund=refusal.reason not in _WINDOW_REFUSALS,
            error=refusal,
        )

    async def _record(
        self, outbound: Outbound, delivery: pb.Delivery, claim: Claim, verdict: _Verdict
    ) -> pb.Delivery:
        """Write the verdict into the record and finish the claim; the record as stored."""
        delivery.status = verdict.status
        delivery.wechat_msg_id = verdict.msgid
        delivery.errcode, delivery.errmsg = verdict.errcode, verdict.errmsg
        delivery.update_time.CopyFrom(timestamp(self._clock.now()))
        record = delivery.SerializeToString()
        early = await self._store.finish(
            claim, record=record, msgid=verdict.msgid, refund=verdict.refund
        )
        if early is not None:
            delivery = await self.results.apply_early(delivery, record, early)
        # Successes are counted by metrics and logged at DEBUG, failures at INFO.
        log.log(
            logging.DEBUG if verdict.error is None else logging.INFO,
            "sent" if verdict.error is None else "send failed",
            extra={
                "app_id": delivery.app_id,
                "delivery_id": delivery.delivery_id,
                "api": outbound.api,
                "errcode": delivery.errcode,
            },
        )
        return delivery

    async def _trip(self, app: AppConfig, api: str) -> None:
        """45009: stop calling this API for the app until WeChat's daily reset."""
        now = self._clock.now()
        try:
            await self._store.trip_circuit(
                app.app_id, api, int(next_reset(now) * 1000), int(now * 1000)
            )
        except WxPlatformError:  # the caller's answer matters more than the circuit
            log.exception("could not open the daily-quota circuit")
        else:
            log.warning(
                "daily quota exhausted; circuit open until the daily reset",
                extra={"app_id": app.app_id, "api": api},
            )

    async def _replay(self, app: AppConfig, delivery_id: str) -> pb.Delivery:
        """The original outcome of a completed request with this key: result or error."""
        delivery = await self.get_delivery(app.app_id, delivery_id)
        if delivery.status == pb.DELIVERY_STATUS_REJECTED:
            kind = classify(delivery.errcode)
            raise WeChatRefused(
                kind.reason, delivery.errcode, delivery.errmsg, "", retry=kind.retry
            )
        if delivery.status == pb.DELIVERY_STATUS_UNKNOWN:
            raise WeChatOutcomeUnknown(delivery.errmsg or "outcome unknown")
        return delivery

    async def _await_first(
        self, app: AppConfig, claim: Claim, outbound: Outbound, deadline: float
    ) -> Begun:
        """A duplicate of a request still in flight: wait for its outcome, not a second send.

        Watches the idempotency key rather than the record: a first request that fails
        before reaching WeChat releases its claim and never writes a record. The key
        then is free, and this request claims it (`begin` lets one claimant through)
        and sends itself. Returns the first verdict other than PENDING.
        """
        pause = _WAIT_START
        while time.monotonic() + pause < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WAIT_CAP)
            held = await self._store.peek(claim)
            if held.state is ClaimState.FREE:
                held = await self._begin(app, claim, outbound)  # PENDING if another won
            if held.state is not ClaimState.PENDING:
                return held
        raise IdempotentRequestInProgress("a request with this idempotency key is still in flight")

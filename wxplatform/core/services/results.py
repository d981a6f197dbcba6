"""WeChat's asynchronous send results, applied to the delivery records they report on.

A template send is answered with a msgid at once; whether the message reached the user
comes later as a TEMPLATESENDJOBFINISH push, and subscribe messages report the same way
(subscribe_msg_sent_event). Ingress hands such pushes to `ResultRecorder.record`. A
result may overtake the send's own `finish` (WeChat answers the call and reports the job
independently): the message store then parks it, and the sender applies it with
`apply_early` once its record is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from google.protobuf import timestamp_pb2

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import messaging_service_pb2 as pb
from wxplatform.clock import Clock
from wxplatform.core.adapters.message_store import MessageStore
from wxplatform.core.model import SendResult
from wxplatform.errors import WxPlatformError

__all__ = ["ResultRecorder", "timestamp"]

log = logging.getLogger("wxplatform.core.messaging")

# Compare-and-set attempts for one result. Only result events write a stored record,
# and WeChat reports once per msgid, so a conflict is a rare duplicate of the same event.
_ATTEMPTS = 5

_TEMPLATE_STATUS = {
    inbound.TEMPLATE_SEND_STATUS_SUCCESS: pb.DELIVERY_STATUS_DELIVERED,
    inbound.TEMPLATE_SEND_STATUS_USER_BLOCKED: pb.DELIVERY_STATUS_USER_BLOCKED,
    inbound.TEMPLATE_SEND_STATUS_SYSTEM_FAILED: pb.DELIVERY_STATUS_SYSTEM_FAILED,
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of a clock reading."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class ResultRecorder:
    """Applies result events to delivery records, idempotently and in either order."""

    def __init__(self, store: MessageStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def record_result(self, message: inbound.InboundMessage) -> None:
        """Apply WeChat's asynchronous result event to the delivery it reports on.

        Idempotent: an event applied again (a retry, a spool replay) changes nothing. An
        event that overtakes our own `finish` is parked in the store and applied when
        the send finishes; one for a msgid we never sent is parked and expires.
        """
        for msgid, result in results_of(message):
            delivery_id = await self._store.locate_or_park(message.app_id, msgid, result)
            if delivery_id is None:
                continue  # parked: `finish` of that send takes it
            raw = await self._store.record(message.app_id, delivery_id)
            await self._apply(message.app_id, delivery_id, raw, result)

    async def apply_early(
        self, delivery: pb.Delivery, record: bytes, early: SendResult
    ) -> pb.Delivery:
        """WeChat reported the result before the send's `finish`: apply it now.

        The send itself succeeded and is recorded; failing to apply the result must not
        turn it into an error for the caller, so the SENT record is returned then.
        """
        try:
            applied = await self._apply(delivery.app_id, delivery.delivery_id, record, early)
        except WxPlatformError:
            log.exception(
                "could not apply an early result event",
                extra={"app_id": delivery.app_id, "delivery_id": delivery.delivery_id},
            )
            return delivery
        return applied if applied is not None else delivery

    async def _apply(
        self, app_id: str, delivery_id: str, raw: bytes | None, result: SendResult
    ) -> pb.Delivery | None:
        """Write `result` into the record `raw` read from the store; the record as stored.

        A compare-and-set, re-read on conflict: a concurrent writer is never overwritten
        with a stale copy, and an expired record (None) is never written back.
        """
        for _ in range(_ATTEMPTS):
            if raw is None:
                return None
            delivery = pb.Delivery.FromString(raw)
            if _carries(delivery, result):
                return delivery  # applied already: the same event again changes nothing
            delivery.status = cast(pb.DeliveryStatus.ValueType, result.status)
            delivery.errcode = result.errcode
            delivery.errmsg = result.errmsg
            delivery.update_time.CopyFrom(timestamp(self._clock.now()))
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


def results_of(message: inbound.InboundMessage) -> Iterator[tuple[str, SendResult]]:
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

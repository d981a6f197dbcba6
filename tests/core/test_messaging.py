"""MessagingService against the WeChat simulator, with the edge for result events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import ingress_service_pb2_grpc, messaging_service_pb2_grpc
from acme.wxplatform.v1 import messaging_service_pb2 as pb
from edge.normalize import normalize
from tests.core.helpers import deliver_request
from tests.core.test_interactions import deliver as deliver_to_core
from tests.core.test_interactions import event as interaction_event
from tests.support import (
    EDGE_CREDENTIAL,
    TEAM_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    refused,
    retry_delay,
    running_simulator,
    running_stack,
)
from wxplatform.background import Background
from wxplatform.clock import Clock, ManualClock
from wxplatform.core.adapters.ingress_store import IngressStore
from wxplatform.core.model import Accepted
from wxplatform.core.services.ingress import dedup_key
from wxplatform.sim import WeChatSimulator, original_id, text_message
from wxplatform.sim.messages import event_message
from wxplatform.wechat.daily import next_reset

FOLLOWER = "oFollower00000000000000001"
TEMPLATE_API = "/cgi-bin/message/template/send"
CUSTOM_API = "/cgi-bin/message/custom/send"


@dataclass
class Env:
    sim: WeChatSimulator
    stacks: list[Stack]
    oa: str
    mini: str

    def stub(self, replica: int = 0) -> messaging_service_pb2_grpc.MessagingServiceStub:
        return messaging_service_pb2_grpc.MessagingServiceStub(self.stacks[replica].channel)

    async def template(
        self, key: str, replica: int = 0, timeout: float = 10, **fields: Any
    ) -> pb.Delivery:
        request = template_request(self.oa, key, **fields)
        response = await self.stub(replica).SendTemplate(
            request, metadata=bearer(TEAM_CREDENTIAL), timeout=timeout
        )
        delivery: pb.Delivery = response.delivery
        return delivery

    async def customer(self, key: str, text: str, to: str = FOLLOWER) -> pb.Delivery:
        request = pb.SendCustomerMessageRequest(
            app_id=self.oa, idempotency_key=key, to_user=to, text=pb.CustomerText(content=text)
        )
        response = await self.stub().SendCustomerMessage(
            request, metadata=bearer(TEAM_CREDENTIAL), timeout=10
        )
        delivery: pb.Delivery = response.delivery
        return delivery

    async def delivery(self, delivery_id: str) -> pb.Delivery:
        response = await self.stub().GetDelivery(
            pb.GetDeliveryRequest(app_id=self.oa, delivery_id=delivery_id),
            metadata=bearer(TEAM_CREDENTIAL),
        )
        delivery: pb.Delivery = response.delivery
        return delivery

    def calls(self, api: str) -> int:
        return len(self.sim.requests(api))


def template_request(app_id: str, key: str, **fields: Any) -> pb.SendTemplateRequest:
    values: dict[str, Any] = {
        "to_user": FOLLOWER,
        "template_id": "TPL_ORDER",
        "url": "https://shop.example.com/o/1",
    }
    values.update(fields)
    request = pb.SendTemplateRequest(app_id=app_id, idempotency_key=key, **values)
    if "data" not in fields:
        request.data["keyword1"].value = "巧克力"
        request.data["keyword2"].value = "39.8元"
        request.data["keyword2"].color = "#173177"
    return request


async def environment(
    redis_client: redis.Redis, replicas: int = 1, clock: Clock | None = None, **oa: Any
) -> AsyncIterator[Env]:
    oa_id, mini_id = new_app_id("wxoa"), new_app_id("wxmini")
    settings = make_settings(
        app_table(oa_id, send_rate_per_second=100_000, **oa),
        app_table(
            mini_id,
            kind="mini_program",
            auto_reply=[],
            default_reply=None,
            send_rate_per_second=100_000,
        ),
    )
    async with AsyncExitStack() as stack:
        sim, settings = await stack.enter_async_context(running_simulator(settings, clock))
        stacks = [
            await stack.enter_async_context(
                running_stack(settings, redis_client, with_edge=True, clock=clock)
            )
        ]
        for _ in range(replicas - 1):
            stacks.append(
                await stack.enter_async_context(running_stack(settings, redis_client, clock=clock))
            )
        sim.set_callback_url(oa_id, stacks[0].edge_url)
        sim.add_template(oa_id, "TPL_ORDER", "template", ["keyword1", "keyword2"])
        sim.add_template(oa_id, "SUB_NOTICE", "subscribe", ["thing1"])
        sim.add_template(mini_id, "SUB_MINI", "subscribe", ["thing1"])
        sim.set_user(oa_id, FOLLOWER, follows=True)
        sim.set_user(oa_id, "oNotFollowing000000000001", follows=False)
        sim.set_user(mini_id, FOLLOWER)
        yield Env(sim, stacks, oa_id, mini_id)


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    async for e in environment(redis_client):
        yield e


failure = refused  # the name these tests (and test_tokens, the races) use


async def test_template_send_and_its_result_event(env: Env) -> None:
    delivery = await env.template("order-1")
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert int(delivery.wechat_msg_id) > 2**31  # WeChat msgids outgrow int32
    assert delivery.kind == pb.DELIVERY_KIND_TEMPLATE
    assert (delivery.caller, delivery.idempotency_key, delivery.summary) == (
        "team",
        "order-1",
        "TPL_ORDER",
    )
    (sent,) = env.sim.sent(env.oa)
    assert sent["payload"]["data"]["keyword1"] == {"value": "巧克力"}
    assert sent["payload"]["client_msg_id"]  # derived from the idempotency key
    # WeChat pushes TEMPLATESENDJOBFINISH to the edge; core moves the record to delivered.
    (pushed,) = await env.sim.drain_callbacks()
    assert await _status(env, delivery.delivery_id) == pb.DELIVERY_STATUS_DELIVERED
    assert pushed is not None


async def _status(env: Env, delivery_id: str) -> int:
    return int((await env.delivery(delivery_id)).status)


async def test_a_result_accepted_before_a_crash_is_applied_by_the_retry(
    env: Env, redis_client: redis.Redis
) -> None:
    """Core accepted the result event and lost its answer before applying it (a crash,
    a timeout): WeChat's retry, or the spool's replay, is a duplicate that applies it."""
    env.sim.set_callback_url(env.oa, None)  # the test delivers the result itself
    sent = await env.template("crash-1")
    fields = {"ToUserName": original_id(env.oa), "FromUserName": FOLLOWER,
              "CreateTime": int(time.time()), "MsgType": "event",
              "Event": "TEMPLATESENDJOBFINISH", "MsgID": sent.wechat_msg_id,
              "Status": "success"}  # fmt: skip
    result = normalize(env.oa, fields, inbound.InboundTransport(), time.time())
    store = IngressStore(
        redis_client,
        dedup_ttl_seconds=600,
        nonce_ttl_seconds=600,
        event_retention=1000,
        background=Background(),
    )
    accepted = Accepted(result.SerializeToString(), "event", result.event, FOLLOWER, (), 0)
    assert (await store.accept(env.oa, dedup_key(result), None, b"", accepted)).new
    assert await _status(env, sent.delivery_id) == pb.DELIVERY_STATUS_SENT
    stub = ingress_service_pb2_grpc.IngressServiceStub(env.stacks[0].channel)
    again = await stub.DeliverMessage(deliver_request(result), metadata=bearer(EDGE_CREDENTIAL))
    assert again.duplicate
    assert await _status(env, sent.delivery_id) == pb.DELIVERY_STATUS_DELIVERED


async def test_blocked_user_result_is_recorded(env: Env) -> None:
    env.sim.set_user(env.oa, FOLLOWER, template_blocked=True)
    delivery = await env.template("order-blocked")
    await env.sim.drain_callbacks()
    record = await env.delivery(delivery.delivery_id)
    assert record.status == pb.DELIVERY_STATUS_USER_BLOCKED
    assert record.errmsg == "failed:user block"


async def test_concurrent_duplicates_make_one_wechat_call(env: Env) -> None:
    deliveries = await asyncio.gather(*(env.template("same-key", replica=0) for _ in range(20)))
    assert len({d.delivery_id for d in deliveries}) == 1
    assert env.calls(TEMPLATE_API) == 1
    again = await env.template("same-key")  # and a retry after completion
    assert again.delivery_id == deliveries[0].delivery_id
    assert env.calls(TEMPLATE_API) == 1


async def test_a_key_reused_for_another_message_is_refused(env: Env) -> None:
    await env.template("k1")
    error = await failure(env.template("k1", url="https://shop.example.com/o/2"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error)[0] == "IDEMPOTENCY_KEY_REUSED"
    assert env.calls(TEMPLATE_API) == 1


@pytest.mark.parametrize(
    ("fields", "code", "reason", "errcode"),
    [
        (
            {"to_user": "oUnknownUser0000000000001"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_OPENID",
            40003,
        ),
        (
            {"to_user": "oNotFollowing000000000001"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "USER_NOT_SUBSCRIBED",
            43004,
        ),
        ({"template_id": "TPL_GONE"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TEMPLATE", 40037),
        (
            {"data": {"keyword9": pb.TemplateDataValue(value="x")}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_TEMPLATE_DATA",
            47003,
        ),
    ],
)
async def test_policy_errors_are_mapped_and_never_retried(
    env: Env, fields: dict[str, Any], code: grpc.StatusCode, reason: str, errcode: int
) -> None:
    error = await failure(env.template("policy", **fields))
    assert error.code() == code
    got, metadata = error_info(error)
    assert (got, metadata["errcode"]) == (reason, str(errcode))
    assert metadata["errmsg"]
    assert env.calls(TEMPLATE_API) == 1
    # The same request again gets the same answer, from the record: no second call.
    assert (await failure(env.template("policy", **fields))).code() == code
    assert env.calls(TEMPLATE_API) == 1


async def test_refused_app_credentials_leave_the_key_usable(env: Env) -> None:
    """No token, no send: once the credentials are fixed the same key may still send."""
    env.sim.add_fault("/cgi-bin/stable_token", errcode=40125)
    refused = await failure(env.template("creds-1"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused)[0] == "APP_CREDENTIALS_REJECTED"
    assert env.calls(TEMPLATE_API) == 0
    delivery = await env.template("creds-1")  # the caller retries after the fix
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 1


async def test_a_replacement_token_rejected_too_leaves_the_key_usable(env: Env) -> None:
    """40001 twice: one replacement, no third call, and WeChat never judged the message."""
    await env.template("warm-up")  # a token is cached
    env.sim.add_fault(TEMPLATE_API, errcode=40001, times=2)
    refused = await failure(env.template("token-twice"))
    assert error_info(refused)[0] == "TOKEN_UNAVAILABLE"
    assert "replacement" in (refused.details() or "")
    assert env.calls(TEMPLATE_API) == 3  # the warm-up, then one try with each token
    delivery = await env.template("token-twice")  # the same key sends once WeChat agrees
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert len(env.sim.sent(env.oa)) == 2


async def test_invalid_requests_never_reach_wechat(env: Env) -> None:
    request = template_request(env.oa, "bad", to_user="", url="ftp://x", template_id="")
    request.data["keyword1"].color = "red"
    error = await failure(env.stub().SendTemplate(request, metadata=bearer(TEAM_CREDENTIAL)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.calls(TEMPLATE_API) == 0
    error = await failure(env.template(""))  # no idempotency key
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_transient_errors_are_retried_inside_the_deadline(env: Env) -> None:
    env.sim.add_fault(TEMPLATE_API, errcode=-1, times=2)
    delivery = await env.template("retry-me")
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 3
    assert len(env.sim.sent(env.oa)) == 1


async def test_a_timeout_after_sending_is_recorded_as_unknown(env: Env) -> None:
    env.sim.add_fault(TEMPLATE_API, latency_ms=3000)
    request = template_request(env.oa, "slow")
    first = await failure(
        env.stub().SendTemplate(request, metadata=bearer(TEAM_CREDENTIAL), timeout=1.5)
    )
    assert first.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The caller retries with the same key: wxplatform does not resend blindly.
    second = await failure(
        env.stub().SendTemplate(request, metadata=bearer(TEAM_CREDENTIAL), timeout=5)
    )
    assert second.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(second)[0] == "WECHAT_OUTCOME_UNKNOWN"
    assert env.calls(TEMPLATE_API) == 1


@pytest.fixture
async def clocked(redis_client: redis.Redis) -> AsyncIterator[tuple[Env, ManualClock]]:
    clock = ManualClock()
    async for e in environment(redis_client, clock=clock):
        yield e, clock


async def test_daily_quota_opens_a_circuit(clocked: tuple[Env, ManualClock]) -> None:
    env, clock = clocked
    env.sim.add_fault(TEMPLATE_API, errcode=45009)
    first = await failure(env.template("q1"))
    assert first.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    until_reset = next_reset(clock.now()) - clock.now()
    assert retry_delay(first) == pytest.approx(until_reset, abs=2)
    second = await failure(env.template("q2"))
    assert error_info(second)[0] == "WECHAT_DAILY_QUOTA_EXHAUSTED"
    assert retry_delay(second) == pytest.approx(until_reset, abs=2)
    assert env.calls(TEMPLATE_API) == 1  # no call while the circuit is open
    # WeChat did not act on the message: after the reset the same key sends it.
    clock.advance(until_reset + 1)
    assert (await env.template("q1")).status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 2


async def test_a_quota_refusal_after_a_possible_send_is_an_unknown_outcome(
    clocked: tuple[Env, ManualClock],
) -> None:
    """The retry of a send met the daily quota, but the first attempt may have been
    delivered: WeChat's duplicate check lasts 10 minutes, so releasing the key would let
    tomorrow's retry send the message twice."""
    env, clock = clocked
    env.sim.add_fault(TEMPLATE_API, http_status=502)  # may have acted: retried
    env.sim.add_fault(TEMPLATE_API, errcode=45009)
    first = await failure(env.template("quota-after-502"))
    assert error_info(first)[0] == "WECHAT_OUTCOME_UNKNOWN"
    assert env.calls(TEMPLATE_API) == 2
    clock.advance(next_reset(clock.now()) - clock.now() + 1)  # the circuit has closed
    again = await failure(env.template("quota-after-502"))
    assert error_info(again)[0] == "WECHAT_OUTCOME_UNKNOWN"
    assert env.calls(TEMPLATE_API) == 2  # never resent under the key


async def test_wechats_rate_limit_leaves_the_key_usable(env: Env) -> None:
    env.sim.add_fault(TEMPLATE_API, errcode=45011)
    refused = await failure(env.template("busy-1"))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused)[0] == "WECHAT_RATE_LIMITED"
    assert retry_delay(refused) == 60
    delivery = await env.template("busy-1")  # the caller retries as RetryInfo says
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 2
    assert len(env.sim.sent(env.oa)) == 1


async def test_a_gateway_page_on_a_template_send_is_retried(env: Env) -> None:
    """Resending is safe: WeChat drops a second send with the same client_msg_id."""
    env.sim.add_fault(TEMPLATE_API, body="<html>502 Bad Gateway</html>")
    delivery = await env.template("page-1")
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 2
    assert len(env.sim.sent(env.oa)) == 1


async def test_rate_limit(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id(), send_rate_per_second=2))
    async with (
        running_simulator(settings) as (sim, settings),
        running_stack(settings, redis_client) as stack,
    ):
        (app_id,) = settings.apps
        sim.add_template(app_id, "TPL_ORDER", "template", ["keyword1", "keyword2"])
        sim.set_user(app_id, FOLLOWER, follows=True)
        stub = messaging_service_pb2_grpc.MessagingServiceStub(stack.channel)
        results = await asyncio.gather(
            *(
                stub.SendTemplate(
                    template_request(app_id, f"r{n}"), metadata=bearer(TEAM_CREDENTIAL)
                )
                for n in range(5)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert refused
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert error_info(refused[0])[0] == "RATE_LIMITED"
        assert len(sim.sent(app_id)) == 5 - len(refused)


async def test_customer_messages_need_an_open_window(env: Env) -> None:
    error = await failure(env.customer("c0", "hello?"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error)[0] == "WINDOW_CLOSED"
    assert env.calls(CUSTOM_API) == 0
    # The user writes to the account (through the edge): 5 sends within 48 h.
    pushed = await env.sim.push(
        env.oa, env.stacks[0].edge_url, text_message(original_id(env.oa), FOLLOWER, "hi")
    )
    assert pushed.ok
    for n in range(5):
        assert (await env.customer(f"c{n + 1}", f"answer {n}")).status == pb.DELIVERY_STATUS_SENT
    error = await failure(env.customer("c6", "one too many"))
    assert error_info(error)[0] == "WINDOW_QUOTA_EXHAUSTED"
    assert env.calls(CUSTOM_API) == 5


async def test_an_unfollow_closes_the_window(env: Env) -> None:
    edge, to = env.stacks[0].edge_url, original_id(env.oa)
    assert (await env.sim.push(env.oa, edge, text_message(to, FOLLOWER, "hi"))).ok
    assert (await env.customer("w1", "welcome")).status == pb.DELIVERY_STATUS_SENT
    assert (await env.sim.push(env.oa, edge, event_message(to, FOLLOWER, "unsubscribe"))).ok
    error = await failure(env.customer("w2", "still there?"))
    assert error_info(error)[0] == "WINDOW_CLOSED"
    assert env.calls(CUSTOM_API) == 1


async def test_a_late_unfollow_closes_only_the_windows_before_it(env: Env) -> None:
    """The user unfollowed, then followed and wrote again; the unfollow's push waited in
    the edge's spool and reaches core last, as the edge's replay delivers it."""
    edge, to = env.stacks[0].edge_url, original_id(env.oa)
    now = int(time.time())
    back = event_message(to, FOLLOWER, "subscribe", create_time=now - 50)
    assert (await env.sim.push(env.oa, edge, back)).ok
    assert (await env.sim.push(env.oa, edge, text_message(to, FOLLOWER, "hi", 71, now))).ok
    late = interaction_event(env.oa, FOLLOWER, "unsubscribe")
    late.create_time = now - 100
    await deliver_to_core(env.stacks[0], late)
    assert (await env.customer("u1", "welcome back")).status == pb.DELIVERY_STATUS_SENT


async def test_an_interaction_from_before_an_unfollow_opens_nothing(env: Env) -> None:
    edge, to = env.stacks[0].edge_url, original_id(env.oa)
    now = int(time.time())
    gone = event_message(to, FOLLOWER, "unsubscribe", create_time=now - 10)
    assert (await env.sim.push(env.oa, edge, gone)).ok
    late = text_message(to, FOLLOWER, "written before leaving", 72, now - 100)
    assert (await env.sim.push(env.oa, edge, late)).ok
    error = await failure(env.customer("u2", "anyone?"))
    assert error_info(error)[0] == "WINDOW_CLOSED"
    assert env.calls(CUSTOM_API) == 0


async def test_a_late_older_interaction_does_not_restore_used_quota(env: Env) -> None:
    """A push replayed late (from the edge's spool) opens no fresher window than it had."""
    edge, to = env.stacks[0].edge_url, original_id(env.oa)
    now = int(time.time())
    assert (await env.sim.push(env.oa, edge, text_message(to, FOLLOWER, "new", 2, now))).ok
    for n in range(3):
        await env.customer(f"l{n}", "answer")
    late = text_message(to, FOLLOWER, "older", 1, now - 100)
    assert (await env.sim.push(env.oa, edge, late)).ok
    for n in range(3, 5):  # the newer window's last two sends
        await env.customer(f"l{n}", "answer")
    error = await failure(env.customer("l5", "one too many"))
    assert error_info(error)[0] == "WINDOW_QUOTA_EXHAUSTED"
    assert env.calls(CUSTOM_API) == 5


async def test_a_refused_send_gives_its_window_unit_back(env: Env) -> None:
    await env.sim.push(
        env.oa, env.stacks[0].edge_url, text_message(original_id(env.oa), FOLLOWER, "hi")
    )
    env.sim.add_fault(CUSTOM_API, errcode=40003)
    assert (await failure(env.customer("x1", "lost"))).code() == grpc.StatusCode.INVALID_ARGUMENT
    for n in range(5):  # still five sends left
        await env.customer(f"y{n}", "fine")


async def test_wechats_window_refusals_keep_the_unit_spent(env: Env) -> None:
    """45047 means WeChat counted more sends than core did: trust it, stop calling."""
    await env.sim.push(
        env.oa, env.stacks[0].edge_url, text_message(original_id(env.oa), FOLLOWER, "hi")
    )
    env.sim.add_fault(CUSTOM_API, errcode=45047, times=-1)
    for n in range(5):
        refused = await failure(env.customer(f"q{n}", "again?"))
        assert error_info(refused)[0] == "WINDOW_QUOTA_EXHAUSTED"
    assert env.calls(CUSTOM_API) == 5
    refused = await failure(env.customer("q5", "and again?"))
    assert error_info(refused)[0] == "WINDOW_QUOTA_EXHAUSTED"
    assert env.calls(CUSTOM_API) == 5  # refused by core's own count now


async def test_subscribe_messages_use_up_consent(env: Env) -> None:
    env.sim.grant_consent(env.oa, FOLLOWER, "SUB_NOTICE", 1)
    request = pb.SendSubscribeMessageRequest(
        app_id=env.oa, idempotency_key="s1", to_user=FOLLOWER, template_id="SUB_NOTICE",
        page="https://shop.example.com/notice",
    )  # fmt: skip
    request.data["thing1"].value = "订单已发货"
    stub, meta = env.stub(), bearer(TEAM_CREDENTIAL)
    delivery = (await stub.SendSubscribeMessage(request, metadata=meta)).delivery
    assert delivery.kind == pb.DELIVERY_KIND_SUBSCRIBE
    await env.sim.drain_callbacks()  # subscribe_msg_sent_event, through the edge
    assert await _status(env, delivery.delivery_id) == pb.DELIVERY_STATUS_DELIVERED
    request.idempotency_key = "s2"
    error = await failure(stub.SendSubscribeMessage(request, metadata=meta))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error)[0] == "SUBSCRIBE_CONSENT_MISSING"
    mini = pb.SendSubscribeMessageRequest(
        app_id=env.mini, idempotency_key="m1", to_user=FOLLOWER, template_id="SUB_MINI",
        page="pages/index/index", mini_program_state=pb.MINI_PROGRAM_STATE_TRIAL, lang="en_US",
    )  # fmt: skip
    mini.data["thing1"].value = "hello"
    env.sim.grant_consent(env.mini, FOLLOWER, "SUB_MINI", 1)
    env.sim.set_callback_url(env.mini, env.stacks[0].edge_url)
    delivery = (await stub.SendSubscribeMessage(mini, metadata=meta)).delivery
    assert delivery.wechat_msg_id
    (sent,) = env.sim.sent(env.mini)
    assert sent["payload"]["miniprogram_state"] == "trial"
    await env.sim.drain_callbacks()  # mini programs get subscribe_msg_sent_event too
    record = await env.stub().GetDelivery(
        pb.GetDeliveryRequest(app_id=env.mini, delivery_id=delivery.delivery_id),
        metadata=meta,
    )
    assert record.delivery.status == pb.DELIVERY_STATUS_DELIVERED


async def test_mini_programs_send_no_template_messages(env: Env) -> None:
    request = template_request(env.mini, "nope")
    error = await failure(env.stub().SendTemplate(request, metadata=bearer(TEAM_CREDENTIAL)))
    assert error_info(error)[0] == "APP_KIND_MISMATCH"


@pytest.mark.parametrize("delivery_id", ["dnope", "d" + "0" * 24, "msgid:200163836", "x" * 5000])
async def test_unknown_delivery(env: Env, delivery_id: str) -> None:
    """Ids this service never made name nothing (not even another record's key)."""
    error = await failure(env.delivery(delivery_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details() or "") < 300


async def test_a_malformed_url_is_an_invalid_argument(env: Env) -> None:
    error = await failure(env.template("bad-url", url="http://[::1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.calls(TEMPLATE_API) == 0


async def test_stampede_of_sends_fetches_one_token(redis_client: redis.Redis) -> None:
    async for env in environment(redis_client, replicas=3):
        env.sim.set_callback_url(env.oa, None)  # 1500 result pushes are another test's business
        # Generous deadlines: 1500 sends through three replicas and the simulator share
        # two cores here; this test is about one token fetch, not about speed.
        sends = [
            env.template(f"burst-{r}-{n}", replica=r, timeout=120)
            for r in range(3)
            for n in range(500)
        ]
        deliveries = await asyncio.gather(*sends)
        assert all(d.status == pb.DELIVERY_STATUS_SENT for d in deliveries)
        assert env.sim.stats()["apps"][env.oa]["stable_token"]["issued"] == 1
        assert len(env.sim.sent(env.oa)) == 1500


@pytest.mark.parametrize("replicas", [1, 3])
async def test_a_rejected_token_is_replaced_once_for_a_burst(
    redis_client: redis.Redis, replicas: int
) -> None:
    """The token design's promise, which must hold on a starved machine too.

    Every replica holds the token in its local copy when it dies elsewhere; a burst of
    sends across the replicas then gets through with exactly one replacement.
    """
    async for env in environment(redis_client, replicas, token_mode="classic"):
        for replica in range(replicas):  # every replica now holds token T1 locally
            await env.template(f"warm-up-{replica}", replica)
        app = env.stacks[0].settings.apps[env.oa]
        query = {
            "grant_type": "client_credential",
            "appid": env.oa,
            "secret": app.app_secret.reveal(),
        }
        async with httpx.AsyncClient(base_url=env.sim.base_url) as client:
            for _ in range(2):  # someone else fetches twice: T1 is dead at once
                assert "access_token" in (await client.get("/cgi-bin/token", params=query)).json()
        deliveries = await asyncio.gather(
            *(env.template(f"after-{n}", n % replicas, timeout=60) for n in range(100))
        )
        assert all(d.status == pb.DELIVERY_STATUS_SENT for d in deliveries)
        assert env.sim.stats()["apps"][env.oa]["token"]["issued"] == 4  # 1 + 2 + one refresh
        assert len(env.sim.sent(env.oa)) == 100 + replicas


async def test_a_dropped_connection_on_a_customer_send_is_not_resent(env: Env) -> None:
    """The request went out and no answer came back: WeChat may have delivered it."""
    await env.sim.push(
        env.oa, env.stacks[0].edge_url, text_message(original_id(env.oa), FOLLOWER, "hi")
    )
    env.sim.add_fault(CUSTOM_API, reset=True)
    first = await failure(env.customer("reset-1", "maybe delivered"))
    assert error_info(first)[0] == "WECHAT_OUTCOME_UNKNOWN"
    again = await failure(env.customer("reset-1", "maybe delivered"))
    assert error_info(again)[0] == "WECHAT_OUTCOME_UNKNOWN"
    assert env.calls(CUSTOM_API) == 1


async def test_a_gateway_error_on_a_customer_send_is_not_resent(env: Env) -> None:
    """Customer messages have no client_msg_id: after a 502 WeChat may have delivered."""
    await env.sim.push(
        env.oa, env.stacks[0].edge_url, text_message(original_id(env.oa), FOLLOWER, "hi")
    )
    env.sim.add_fault(CUSTOM_API, http_status=502, times=3)
    first = await failure(env.customer("gw-1", "maybe delivered"))
    assert error_info(first)[0] == "WECHAT_OUTCOME_UNKNOWN"
    again = await failure(env.customer("gw-1", "maybe delivered"))  # the caller retries
    assert error_info(again)[0] == "WECHAT_OUTCOME_UNKNOWN"
    assert env.calls(CUSTOM_API) == 1

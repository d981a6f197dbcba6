"""MessagingService races: result events that overtake their send, released claims.

WeChat answers a send and reports its delivery independently, so the result event can
reach core before core has recorded the send; and a duplicate waiting for a first
request must take over when that request gives its claim back. Both are driven here
through the edge and the gRPC API, with the simulator holding requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import messaging_service_pb2 as pb
from tests.core.test_messaging import (
    FOLLOWER,
    TEMPLATE_API,
    Env,
    environment,
    failure,
    template_request,
)
from tests.support import TEAM_CREDENTIAL, bearer
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.sim import event_message, original_id
from wxplatform.sim.outbox import FIRST_MSGID

TOKEN_API = "/cgi-bin/stable_token"
BIZSEND_API = "/cgi-bin/message/subscribe/bizsend"


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    """One core with an edge; the simulator pushes no result events by itself."""
    async for e in environment(redis_client):
        # The tests push result events themselves, at the moment they choose.
        e.sim.set_callback_url(e.oa, None)
        yield e


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait for `condition` (generously: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def push_template_result(env: Env, msgid: int, status: str, create_time: int) -> None:
    """WeChat's TEMPLATESENDJOBFINISH for `msgid`, through the edge.

    Pushes with another `create_time` are other events to ingress's dedup, so the same
    result can reach the delivery record more than once.
    """
    fields = event_message(
        original_id(env.oa),
        FOLLOWER,
        "TEMPLATESENDJOBFINISH",
        create_time=create_time,
        extra={"MsgID": msgid, "Status": status},
    )
    assert (await env.sim.push(env.oa, env.stacks[0].edge_url, fields)).ok


async def push_subscribe_result(env: Env, msgid: int, error_code: int, error_status: str) -> None:
    """WeChat's subscribe_msg_sent_event for `msgid`, through the edge."""
    entry = {
        "TemplateId": "SUB_NOTICE",
        "MsgID": msgid,
        "ErrorCode": error_code,
        "ErrorStatus": error_status,
    }
    fields = event_message(
        original_id(env.oa),
        FOLLOWER,
        "subscribe_msg_sent_event",
        extra={"SubscribeMsgSentEvent": {"List": entry}},
    )
    assert (await env.sim.push(env.oa, env.stacks[0].edge_url, fields)).ok


def early_key(env: Env, msgid: int) -> str:
    return app_key(env.oa, "delivery", "early", str(msgid))


async def test_a_result_event_that_overtakes_the_send_is_applied(
    env: Env, redis_client: redis.Redis
) -> None:
    # The extreme of the race: the result is in core before the send even starts. The
    # simulator's first send gets FIRST_MSGID (asserted below), so the event can name it.
    env.sim.grant_consent(env.oa, FOLLOWER, "SUB_NOTICE", 1)
    await push_subscribe_result(env, FIRST_MSGID, 43101, "user refuse to accept the msg")
    assert await redis_client.exists(early_key(env, FIRST_MSGID))
    request = pb.SendSubscribeMessageRequest(
        app_id=env.oa, idempotency_key="early-sub", to_user=FOLLOWER, template_id="SUB_NOTICE",
        page="https://shop.example.com/notice",
    )  # fmt: skip
    request.data["thing1"].value = "订单已发货"
    response = await env.stub().SendSubscribeMessage(request, metadata=bearer(TEAM_CREDENTIAL))
    delivery = response.delivery
    assert delivery.wechat_msg_id == str(FIRST_MSGID)
    # The send's own answer already carries the result that was waiting for it …
    assert delivery.status == pb.DELIVERY_STATUS_REJECTED
    assert (delivery.errcode, delivery.errmsg) == (43101, "user refuse to accept the msg")
    # … and so does the record, and the parked result is gone.
    assert await env.delivery(delivery.delivery_id) == delivery
    assert not await redis_client.exists(early_key(env, FIRST_MSGID))
    assert env.calls(BIZSEND_API) == 1


async def test_a_result_event_during_the_send_is_applied(env: Env) -> None:
    # WeChat holds the send (its answer is slow); meanwhile it already pushes the result.
    env.sim.add_fault(TEMPLATE_API, latency_ms=3000)
    sending = asyncio.create_task(env.template("in-flight", timeout=60))
    await until(lambda: env.calls(TEMPLATE_API) == 1, "the send to reach WeChat")
    await push_template_result(env, FIRST_MSGID, "success", int(time.time()))
    delivery = await sending
    assert delivery.wechat_msg_id == str(FIRST_MSGID)
    assert (await env.delivery(delivery.delivery_id)).status == pb.DELIVERY_STATUS_DELIVERED


async def test_a_result_event_applied_again_changes_nothing(env: Env) -> None:
    # Early, twice: the second parks the same result over the first.
    now = int(time.time())
    await push_template_result(env, FIRST_MSGID, "failed:user block", now)
    await push_template_result(env, FIRST_MSGID, "failed:user block", now + 1)
    sent = await env.template("twice")
    assert sent.wechat_msg_id == str(FIRST_MSGID)
    assert sent.status == pb.DELIVERY_STATUS_USER_BLOCKED
    record = await env.delivery(sent.delivery_id)
    # Late, again and concurrently: the record stays exactly as it is (update_time too).
    await asyncio.gather(
        *(push_template_result(env, FIRST_MSGID, "failed:user block", now + n) for n in range(2, 8))
    )
    assert await env.delivery(sent.delivery_id) == record
    assert record.errmsg == "failed:user block"


async def test_a_result_event_for_an_unknown_msgid_is_parked_briefly(
    env: Env, redis_client: redis.Redis
) -> None:
    # A send made outside wxplatform (WeChat reports those too): no record, no error,
    # and the parked result expires on its own within minutes, not with the records.
    unknown = 1_000_000_001
    await push_template_result(env, unknown, "success", int(time.time()))
    ttl_ms = await redis_client.pttl(early_key(env, unknown))
    assert 0 < ttl_ms <= 120_000
    assert not await redis_client.exists(app_key(env.oa, "delivery", "msgid", str(unknown)))
    # A later send with another msgid is untouched by it.
    sent = await env.template("unrelated")
    assert sent.wechat_msg_id != str(unknown)
    assert (await env.delivery(sent.delivery_id)).status == pb.DELIVERY_STATUS_SENT


async def test_a_result_event_never_revives_an_expired_record(
    env: Env, redis_client: redis.Redis
) -> None:
    sent = await env.template("expired")
    # The record expires; its msgid index (same TTL) may outlive it by a moment.
    await redis_client.delete(app_key(env.oa, "delivery", sent.delivery_id))
    await push_template_result(env, int(sent.wechat_msg_id), "success", int(time.time()))
    error = await failure(env.delivery(sent.delivery_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert not await redis_client.exists(early_key(env, int(sent.wechat_msg_id)))


async def _hold_a_failing_first_send(env: Env, key: str) -> asyncio.Task[Any]:
    """Start a send that claims `key` and then fails before reaching the send API.

    WeChat holds the token fetch for 6 s, past the first request's 3 s deadline: the
    first gives up waiting for a token (nothing was sent) and releases its claim. The
    fetch itself then succeeds, for whoever sends next. Returns the first send once it
    holds the claim.
    """
    env.sim.add_fault(TOKEN_API, latency_ms=6000)
    sending = asyncio.create_task(env.template(key, timeout=3))
    await until(lambda: len(env.sim.requests(TOKEN_API)) == 1, "the first's token fetch")
    return sending


async def test_a_duplicate_sends_itself_when_the_first_releases_its_claim(env: Env) -> None:
    first = await _hold_a_failing_first_send(env, "released")
    # Before the fix this waited out its whole deadline and failed with ABORTED.
    duplicate = asyncio.create_task(env.template("released", timeout=60))
    await failure(first)  # TOKEN_UNAVAILABLE, or the caller's own deadline first
    assert env.calls(TEMPLATE_API) == 0
    delivery = await duplicate
    assert delivery.status == pb.DELIVERY_STATUS_SENT
    assert env.calls(TEMPLATE_API) == 1
    # The key is now done: a retry replays the duplicate's send.
    assert (await env.template("released")).delivery_id == delivery.delivery_id
    assert env.calls(TEMPLATE_API) == 1


async def test_waiting_duplicates_on_two_replicas_take_over_with_one_send(
    redis_client: redis.Redis,
) -> None:
    async for env in environment(redis_client, replicas=2):
        env.sim.set_callback_url(env.oa, None)
        first = await _hold_a_failing_first_send(env, "stampede")
        duplicates = [
            asyncio.create_task(env.template("stampede", replica=n % 2, timeout=60))
            for n in range(6)
        ]
        await failure(first)
        deliveries = await asyncio.gather(*duplicates)
        assert len({d.delivery_id for d in deliveries}) == 1
        assert all(d.status == pb.DELIVERY_STATUS_SENT for d in deliveries)
        assert env.calls(TEMPLATE_API) == 1


async def test_core_stops_only_after_a_send_whose_caller_left(
    env: Env, redis_client: redis.Redis
) -> None:
    """The send goes on without its caller (its outcome must be recorded); stopping core
    waits for it, so it never runs on after the process closed its connections."""
    env.sim.add_fault(TEMPLATE_API, latency_ms=2000)
    request = template_request(env.oa, "left-alone")
    call = env.stub().SendTemplate(request, metadata=bearer(TEAM_CREDENTIAL), timeout=60)
    await until(lambda: env.calls(TEMPLATE_API) == 1, "the send to reach WeChat")
    call.cancel()
    await env.stacks[0].core.stop()
    assert len(env.sim.sent(env.oa)) == 1
    [idem] = [key async for key in redis_client.scan_iter(app_key(env.oa, "idem", "*"))]
    state = await redis_client.get(idem)
    assert isinstance(state, bytes)
    assert state.startswith(b"done:")

"""TokenService against the WeChat simulator: one token per app, whatever the load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import messaging_service_pb2 as pb_messaging
from acme.wxplatform.v1 import token_service_pb2 as pb
from acme.wxplatform.v1 import token_service_pb2_grpc
from tests.core.test_messaging import TEMPLATE_API, Env, environment, failure
from tests.support import (
    TEAM_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    retry_delay,
    running_simulator,
    running_stack,
)
from wxplatform.clock import ManualClock
from wxplatform.config import hash_credential
from wxplatform.core.adapters.credential_store import CredentialStore
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.sim import WeChatSimulator
from wxplatform.wechat.daily import next_reset
from wxplatform.wechat.signature import jssdk_signature


@dataclass
class World:
    sim: WeChatSimulator
    clock: ManualClock
    replicas: list[Stack]
    app_id: str

    def stub(self, replica: int = 0) -> token_service_pb2_grpc.TokenServiceStub:
        return token_service_pb2_grpc.TokenServiceStub(self.replicas[replica].channel)

    async def token(self, replica: int = 0) -> pb.GetAccessTokenResponse:
        response: pb.GetAccessTokenResponse = await self.stub(replica).GetAccessToken(
            pb.GetAccessTokenRequest(app_id=self.app_id),
            metadata=bearer(TEAM_CREDENTIAL),
            # Generous: the stampede tests run 1500 calls on two cores; they test counts.
            timeout=60,
        )
        return response

    def issued(self, endpoint: str = "stable_token") -> int:
        return int(self.sim.stats()["apps"][self.app_id][endpoint]["issued"])


async def world(redis_client: redis.Redis, replicas: int = 1, **app: Any) -> AsyncIterator[World]:
    app_id = new_app_id()
    settings = make_settings(app_table(app_id, **app))
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        sim, settings = await stack.enter_async_context(running_simulator(settings, clock))
        running = [
            await stack.enter_async_context(running_stack(settings, redis_client, clock=clock))
            for _ in range(replicas)
        ]
        yield World(sim, clock, running, app_id)


@pytest.fixture
async def one(redis_client: redis.Redis) -> AsyncIterator[World]:
    async for w in world(redis_client):
        yield w


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    async for e in environment(redis_client, clock=ManualClock()):
        yield e


@pytest.fixture
async def three(redis_client: redis.Redis) -> AsyncIterator[World]:
    async for w in world(redis_client, replicas=3):
        yield w


async def test_token_is_fetched_once_and_shared(one: World) -> None:
    first = await one.token()
    second = await one.token()
    assert first.access_token == second.access_token
    assert first.expire_time.seconds == pytest.approx(one.clock.now() + 7200, abs=2)
    assert one.issued() == 1
    requests = one.sim.requests("/cgi-bin/stable_token")
    assert (
        requests[0]["json"]["secret"]
        != one.replicas[0].settings.apps[one.app_id].app_secret.reveal()
    )


async def test_stampede_on_a_cold_cache_fetches_once(three: World) -> None:
    calls = [three.token(replica) for replica in range(3) for _ in range(500)]
    tokens = await asyncio.gather(*calls)
    assert len({t.access_token for t in tokens}) == 1
    assert three.issued() == 1


async def test_near_expiry_exactly_one_replica_refreshes(three: World) -> None:
    old = await three.token()
    three.clock.advance(7200 - 200)  # inside the refresh margin, still valid
    tokens = await asyncio.gather(*(three.token(r) for r in range(3) for _ in range(100)))
    # Callers are answered at once with the still-valid token or the new one...
    assert {t.access_token for t in tokens} <= {
        old.access_token,
        (await three.token()).access_token,
    }
    for _ in range(200):  # ...while one background refresh replaces it
        if three.issued() == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert three.issued() == 2
    new = await three.token(2)
    assert new.access_token != old.access_token
    assert new.expire_time.seconds > old.expire_time.seconds


async def test_expired_token_is_replaced_once(three: World) -> None:
    old = await three.token()
    three.clock.advance(7200 + 10)
    tokens = await asyncio.gather(*(three.token(r) for r in range(3) for _ in range(100)))
    assert {t.access_token for t in tokens} != {old.access_token}
    assert len({t.access_token for t in tokens}) == 1
    assert three.issued() == 2


async def test_concurrent_invalidations_refresh_once(three: World) -> None:
    old = (await three.token()).access_token
    request = pb.InvalidateAccessTokenRequest(app_id=three.app_id, access_token=old)
    answers = await asyncio.gather(
        *(
            three.stub(r).InvalidateAccessToken(
                request, metadata=bearer(TEAM_CREDENTIAL), timeout=10
            )
            for r in range(3)
            for _ in range(34)
        )
    )
    assert sum(a.invalidated for a in answers) == 1
    assert len({a.access_token for a in answers}) == 1
    assert answers[0].access_token != old
    stats = three.sim.stats()["apps"][three.app_id]["stable_token"]
    assert stats["forced"] == 1  # normal mode returned the rejected token, so one forced refresh
    # A report about a token that is no longer current changes nothing.
    again = await three.stub().InvalidateAccessToken(request, metadata=bearer(TEAM_CREDENTIAL))
    assert not again.invalidated
    assert again.access_token == answers[0].access_token


async def test_a_token_invalidated_on_another_replica_is_never_handed_out_again(
    three: World, redis_client: redis.Redis
) -> None:
    """Replica 0's invalidation is all replica 1 sees: an expiry of 0 in Redis.

    Normal-mode stable_token still returns the old token (WeChat thinks it valid), so
    replica 1 must refresh as after a rejection (forced), not store the old one again.
    """
    old = (await three.token(0)).access_token
    assert await redis_client.hset(app_key(three.app_id, "token"), "expires_ms", 0) == 0
    fresh = await three.token(1)
    assert fresh.access_token != old
    stats = three.sim.stats()["apps"][three.app_id]["stable_token"]
    assert stats["forced"] == 1


async def _invalidate(w: World, token: str) -> pb.InvalidateAccessTokenResponse:
    response: pb.InvalidateAccessTokenResponse = await w.stub().InvalidateAccessToken(
        pb.InvalidateAccessTokenRequest(app_id=w.app_id, access_token=token),
        metadata=bearer(TEAM_CREDENTIAL),
    )
    return response


async def test_forced_refreshes_obey_wechats_limits(one: World) -> None:
    first = (await one.token()).access_token
    second = await _invalidate(one, first)
    assert second.invalidated
    assert second.access_token != first
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a second force within 30 s
        await _invalidate(one, second.access_token)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value)[0] == "TOKEN_REFRESH_LIMITED"
    assert retry_delay(caught.value) == pytest.approx(30, abs=1)
    # The refused report takes nothing out of service: WeChat still hands the token out.
    assert (await one.token()).access_token == second.access_token
    assert (await one.token(0)).access_token == second.access_token
    one.clock.advance(31)
    third = await _invalidate(one, second.access_token)
    assert third.invalidated
    assert third.access_token not in (first, second.access_token)
    assert one.sim.stats()["apps"][one.app_id]["stable_token"]["forced"] == 2


async def test_past_the_daily_cap_of_forced_refreshes_the_token_stays_in_service(
    one: World,
) -> None:
    now = one.clock.now()
    one.clock.advance(next_reset(now) - now + 60)
    token = (await one.token()).access_token  # just after a Beijing midnight: one whole day
    for _ in range(20):
        answer = await _invalidate(one, token)
        assert answer.invalidated
        assert answer.access_token != token
        token = answer.access_token
        one.clock.advance(31)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _invalidate(one, token)
    assert error_info(caught.value)[0] == "TOKEN_REFRESH_LIMITED"
    delay = retry_delay(caught.value)
    assert delay is not None
    assert 86400 - 60 - 20 * 31 - 5 < delay <= 86400 - 60 - 20 * 31  # until Beijing midnight
    assert (await one.token()).access_token == token


async def test_a_forced_refresh_without_an_answer_is_a_token_failure(env: Env) -> None:
    """A send whose token WeChat rejected, and whose forced refresh got no answer, was
    never sent: its key stays usable instead of being recorded as an unknown outcome."""
    await env.template("warm-up")
    env.sim.add_fault(TEMPLATE_API, errcode=40001)
    # The refresh asks in normal mode (the same token comes back), then forces.
    env.sim.add_fault("/cgi-bin/stable_token", latency_ms=1, times=1)
    env.sim.add_fault("/cgi-bin/stable_token", reset=True, times=1)
    refused = await failure(env.template("after-a-lost-refresh"))
    assert error_info(refused)[0] == "WECHAT_UNAVAILABLE"
    assert len(env.sim.sent(env.oa)) == 1  # the warm-up only
    env.sim.advance_clock(31)  # the next forced refresh is allowed
    delivery = await env.template("after-a-lost-refresh")
    assert delivery.status == pb_messaging.DELIVERY_STATUS_SENT
    assert len(env.sim.sent(env.oa)) == 2


async def test_one_failing_app_does_not_stop_the_background_refresh(
    redis_client: redis.Redis,
) -> None:
    stale, fine = new_app_id("wxstale"), new_app_id("wxfine")
    settings = make_settings(app_table(stale), app_table(fine))
    clock = ManualClock()
    async with (
        running_simulator(settings, clock) as (sim, settings),
        running_stack(settings, redis_client, clock=clock) as stack,
    ):
        stub = token_service_pb2_grpc.TokenServiceStub(stack.channel)
        for app_id in (stale, fine):
            await stub.GetAccessToken(
                pb.GetAccessTokenRequest(app_id=app_id), metadata=bearer(TEAM_CREDENTIAL)
            )
        sim.reset_secret(stale)  # core's copy of the first app's AppSecret is now wrong
        clock.advance(7200 - 200)  # both tokens are due for their refresh
        await stack.core.tokens.keep_fresh()
        issued = {a: sim.stats()["apps"][a]["stable_token"]["issued"] for a in (stale, fine)}
        assert issued == {stale: 1, fine: 2}


async def test_a_gateway_page_on_a_token_fetch_is_retried(one: World) -> None:
    one.sim.add_fault("/cgi-bin/stable_token", body="<html>502 Bad Gateway</html>")
    assert (await one.token()).access_token
    assert len(one.sim.requests("/cgi-bin/stable_token")) == 2
    assert one.issued() == 1


async def test_classic_mode_uses_cgi_bin_token(redis_client: redis.Redis) -> None:
    async for w in world(redis_client, token_mode="classic"):
        token = await w.token()
        assert w.issued("token") == 1
        assert w.issued("stable_token") == 0
        assert len(token.access_token) > 32


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        ({"errcode": 45009}, grpc.StatusCode.RESOURCE_EXHAUSTED, "WECHAT_DAILY_QUOTA_EXHAUSTED"),
        ({"errcode": 40013}, grpc.StatusCode.FAILED_PRECONDITION, "APP_CREDENTIALS_REJECTED"),
        ({"errcode": -1, "times": 10}, grpc.StatusCode.UNAVAILABLE, "WECHAT_UNAVAILABLE"),
        ({"http_status": 502, "times": 10}, grpc.StatusCode.UNAVAILABLE, "WECHAT_UNAVAILABLE"),
        (
            {"body": "<html>maintenance</html>", "times": 10},
            grpc.StatusCode.UNAVAILABLE,
            "WECHAT_BAD_RESPONSE",
        ),
    ],
)
async def test_wechat_failures_map_to_typed_errors(
    one: World, fault: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    one.sim.add_fault("/cgi-bin/stable_token", **fault)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.stub().GetAccessToken(
            pb.GetAccessTokenRequest(app_id=one.app_id), metadata=bearer(TEAM_CREDENTIAL), timeout=3
        )
    assert caught.value.code() == code
    got, metadata = error_info(caught.value)
    assert got == reason
    if "errcode" in fault and fault["errcode"] != -1:
        assert metadata["errcode"] == str(fault["errcode"])
    secret = one.replicas[0].settings.apps[one.app_id].app_secret.reveal()
    assert secret not in (caught.value.details() or "")
    if fault.get("errcode") == 45009:  # try again after WeChat's daily reset
        now = one.clock.now()
        reset = next_reset(now)
        assert retry_delay(caught.value) == pytest.approx(reset - now, abs=2)
        assert 0 < reset - now <= 86400


async def test_a_dropped_connection_on_a_token_fetch_is_retried(one: World) -> None:
    """Fetching a token is safe to repeat: a reset without an answer is tried again."""
    one.sim.add_fault("/cgi-bin/stable_token", reset=True, times=2)
    token = await one.token()
    assert token.access_token
    assert len(one.sim.requests("/cgi-bin/stable_token")) == 3


async def test_transient_errors_are_retried(one: World) -> None:
    one.sim.add_fault("/cgi-bin/stable_token", errcode=-1, times=2)
    token = await one.token()
    assert token.access_token
    assert len(one.sim.requests("/cgi-bin/stable_token")) == 3


async def test_js_sdk_signature(one: World) -> None:
    stub, meta = one.stub(), bearer(TEAM_CREDENTIAL)
    url = "https://shop.example.com/item?id=42#reviews"
    first = await stub.GetJsSdkSignature(
        pb.GetJsSdkSignatureRequest(app_id=one.app_id, url=url), metadata=meta
    )
    await stub.GetJsSdkSignature(
        pb.GetJsSdkSignatureRequest(app_id=one.app_id, url=url), metadata=meta
    )
    assert one.sim.stats()["apps"][one.app_id]["ticket_calls"] == 1  # cached
    ticket, _ = one.sim.state.tickets.get(one.app_id, "jsapi")
    assert first.url == "https://shop.example.com/item?id=42"
    assert first.signature == jssdk_signature(ticket, first.nonce_str, first.timestamp, first.url)
    assert first.timestamp == int(one.clock.now())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJsSdkSignature(
            pb.GetJsSdkSignatureRequest(app_id=one.app_id, url="/relative"), metadata=meta
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("given", "signed"),
    [
        ("HTTPS://Shop.Example.COM/Item?Id=42", "https://shop.example.com/Item?Id=42"),
        ("https://shop.example.com:443/a", "https://shop.example.com/a"),
        ("http://shop.example.com:80", "http://shop.example.com/"),
        ("https://shop.example.com:8443/a?b#c", "https://shop.example.com:8443/a?b"),
        ("https://[::1]:8443/a", "https://[::1]:8443/a"),
        (
            "https://例子.测试/页?q=书 1",
            "https://xn--fsqu00a.xn--0zwm56d/%E9%A1%B5?q=%E4%B9%A6%201",
        ),
        ("https://x.cn/a%20b?c=%E4%B9%A6", "https://x.cn/a%20b?c=%E4%B9%A6"),
    ],
)
async def test_js_sdk_signs_the_url_as_the_browser_reports_it(
    one: World, given: str, signed: str
) -> None:
    """WeChat signs `location.href`: lower-case scheme and host, no default port."""
    answer = await one.stub().GetJsSdkSignature(
        pb.GetJsSdkSignatureRequest(app_id=one.app_id, url=given), metadata=bearer(TEAM_CREDENTIAL)
    )
    assert answer.url == signed
    ticket, _ = one.sim.state.tickets.get(one.app_id, "jsapi")
    assert answer.signature == jssdk_signature(ticket, answer.nonce_str, answer.timestamp, signed)


@pytest.mark.parametrize(
    "url",
    ["/relative", "ftp://x/y", "https://", "https://x:port/", "https://u:p@x/", "http://[::1"],
)
async def test_js_sdk_refuses_what_is_no_page_url(one: World, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.stub().GetJsSdkSignature(
            pb.GetJsSdkSignatureRequest(app_id=one.app_id, url=url),
            metadata=bearer(TEAM_CREDENTIAL),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stalled_refresher_cannot_store_an_older_token(redis_client: redis.Redis) -> None:
    store = CredentialStore(redis_client, "token", lock_ms=100)
    app_id = new_app_id()
    stalled = await store.acquire(app_id)
    assert stalled
    await asyncio.sleep(0.25)  # its lock expires while it is "paused"
    fresh = await store.acquire(app_id)
    assert fresh > stalled
    assert await store.store(app_id, fresh, "newer", int(time.time() * 1000) + 7_200_000)
    assert not await store.store(app_id, stalled, "older", int(time.time() * 1000) + 7_200_000)
    current = await store.read(app_id)
    assert current is not None
    assert current.value == "newer"
    # Even holding the lock again later, an older fence cannot overwrite a newer write.
    await redis_client.set(f"wxp:{{{app_id}}}:token:lock", stalled)
    assert not await store.store(app_id, stalled, "older", 0)


async def test_a_refresher_whose_lock_expired_unclaimed_still_stores(
    redis_client: redis.Redis,
) -> None:
    """A starved holder's fetch reached WeChat: keep its token while nobody took over."""
    store = CredentialStore(redis_client, "token", lock_ms=100)
    app_id = new_app_id()
    starved = await store.acquire(app_id)
    await asyncio.sleep(0.25)  # the lock expires; no other refresher comes
    assert await store.store(app_id, starved, "fetched", int(time.time() * 1000) + 7_200_000)
    current = await store.read(app_id)
    assert current is not None
    assert (current.value, current.fence) == ("fetched", starved)
    assert await store.acquire(app_id) > starved  # and the lock is free again


async def test_invalidating_needs_the_grant_to_read_tokens(redis_client: redis.Redis) -> None:
    """InvalidateAccessToken answers with the current token: a caller allowed only to
    report tokens must not read them that way."""
    app_id = new_app_id()
    reporter = "reporter-credential-0001"
    callers = [
        {"name": "team", "token_sha256": hash_credential(TEAM_CREDENTIAL),
         "allow": [{"apps": ["*"], "rpcs": ["*"]}]},
        {"name": "reporter", "token_sha256": hash_credential(reporter),
         "allow": [{"apps": ["*"], "rpcs": ["TokenService/InvalidateAccessToken"]}]},
    ]  # fmt: skip
    settings = make_settings(app_table(app_id), callers=callers)
    async with (
        running_simulator(settings) as (_, settings),
        running_stack(settings, redis_client) as stack,
    ):
        stub = token_service_pb2_grpc.TokenServiceStub(stack.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.InvalidateAccessToken(
                pb.InvalidateAccessTokenRequest(app_id=app_id, access_token="bogus"),
                metadata=bearer(reporter),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "GetAccessToken" in (caught.value.details() or "")


async def test_errors_quote_request_values_briefly(one: World) -> None:
    """A 20 KB app id is not echoed back whole: the error and its reason still arrive."""
    huge = "x" * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.stub().GetAccessToken(
            pb.GetAccessTokenRequest(app_id=huge), metadata=bearer(TEAM_CREDENTIAL)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value)[0] == "CALLER_NOT_AUTHORIZED"
    assert len(caught.value.details() or "") < 300


async def test_a_ticket_endpoints_daily_quota_carries_retry_info(one: World) -> None:
    await one.token()
    one.sim.add_fault("/cgi-bin/ticket/getticket", errcode=45009)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.stub().GetJsSdkSignature(
            pb.GetJsSdkSignatureRequest(app_id=one.app_id, url="https://x.cn/"),
            metadata=bearer(TEAM_CREDENTIAL),
        )
    assert error_info(caught.value)[0] == "WECHAT_DAILY_QUOTA_EXHAUSTED"
    now = one.clock.now()
    assert retry_delay(caught.value) == pytest.approx(next_reset(now) - now, abs=2)

"""EventService through the generated stub: groups, sharing, redelivery, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import duration_pb2

from acme.wxplatform.v1 import event_service_pb2 as ev
from acme.wxplatform.v1 import event_service_pb2_grpc, ingress_service_pb2_grpc
from tests.core.helpers import deliver_request, text_message
from tests.support import (
    EDGE_CREDENTIAL,
    TEAM_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    running_stack,
)
from wxplatform.core.adapters.redis_keys import app_key


@pytest.fixture
async def stack(redis_client: redis.Redis) -> AsyncIterator[Stack]:
    settings = make_settings(app_table(new_app_id()), core={"max_deliveries": 2})
    async with running_stack(settings, redis_client) as running:
        yield running


def the_app(stack: Stack) -> str:
    (app_id,) = stack.settings.apps
    return app_id


def subscribe(stack: Stack, group: str, consumer: str, **extra: Any) -> Any:
    stub = event_service_pb2_grpc.EventServiceStub(stack.channel)
    request = ev.StreamEventsRequest(
        app_id=the_app(stack),
        consumer_group=group,
        consumer_name=consumer,
        start_position=ev.START_POSITION_EARLIEST,
        **extra,
    )
    return stub.StreamEvents(request, metadata=bearer(TEAM_CREDENTIAL))


async def deliver(stack: Stack, *contents: str, first_id: int = 1) -> None:
    stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
    for offset, content in enumerate(contents):
        message = text_message(the_app(stack), content, str(first_id + offset))
        await stub.DeliverMessage(deliver_request(message), metadata=bearer(EDGE_CREDENTIAL))


async def read(stream: Any, count: int, timeout: float = 10) -> list[ev.StreamEventsResponse]:
    async def take() -> list[ev.StreamEventsResponse]:
        return [await stream.read() for _ in range(count)]

    return await asyncio.wait_for(take(), timeout)


async def ack(stack: Stack, group: str, *event_ids: str) -> int:
    stub = event_service_pb2_grpc.EventServiceStub(stack.channel)
    response = await stub.AckEvents(
        ev.AckEventsRequest(app_id=the_app(stack), consumer_group=group, event_ids=event_ids),
        metadata=bearer(TEAM_CREDENTIAL),
    )
    return int(response.acknowledged_count)


async def test_every_group_gets_every_event(stack: Stack) -> None:
    await deliver(stack, "one", "two", "three")
    billing, audit = subscribe(stack, "billing", "b1"), subscribe(stack, "audit", "a1")
    for stream in (billing, audit):
        events = await read(stream, 3)
        assert [e.message.text.content for e in events] == ["one", "two", "three"]
        assert all(e.delivery_count == 1 for e in events)
        assert events[0].append_time.seconds > 0
        stream.cancel()


async def test_consumers_of_one_group_share_the_events(stack: Stack) -> None:
    first = subscribe(stack, "workers", "w1", max_in_flight=2)
    second = subscribe(stack, "workers", "w2", max_in_flight=2)
    await asyncio.sleep(0)  # both streams open; events may land on either
    await deliver(stack, *(f"job {n}" for n in range(4)))
    got = await read(first, 2) + await read(second, 2)
    assert sorted(e.message.text.content for e in got) == [f"job {n}" for n in range(4)]
    assert len({e.event_id for e in got}) == 4
    first.cancel()
    second.cancel()


async def test_unacknowledged_events_come_back_then_go_to_dead_letters(
    stack: Stack, redis_client: redis.Redis
) -> None:
    await deliver(stack, "fragile", "fine")
    one_second = duration_pb2.Duration(seconds=1)
    stream = subscribe(stack, "flaky", "f1", visibility_timeout=one_second)
    first = await read(stream, 2)
    assert await ack(stack, "flaky", first[1].event_id) == 1  # "fine" is done
    again = await read(stream, 1)  # "fragile" comes back after the visibility timeout
    assert again[0].event_id == first[0].event_id
    assert again[0].delivery_count == 2
    # A third delivery would exceed max_deliveries=2: it goes to the dead-letter stream.
    dead_key = app_key(the_app(stack), "events", "dead")
    for _ in range(100):
        if await redis_client.xlen(dead_key):
            break
        await asyncio.sleep(0.1)
    ((_, fields),) = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis_client.xrange(dead_key)
    )
    assert fields[b"event_id"].decode() == first[0].event_id
    assert fields[b"group"] == b"flaky"
    assert fields[b"deliveries"] == b"2"
    with pytest.raises(TimeoutError):  # and never a third delivery
        await read(stream, 1, timeout=2.5)
    stream.cancel()
    assert await ack(stack, "flaky", first[0].event_id) == 0  # no longer pending


async def test_filters_select_by_msg_type_or_event(stack: Stack) -> None:
    await deliver(stack, "text one")
    stream = subscribe(stack, "images-only", "i1", msg_types=["image"], events=["subscribe"])
    with pytest.raises(TimeoutError):
        await read(stream, 1, timeout=1.5)
    stream.cancel()
    texts = subscribe(stack, "texts", "t1", msg_types=["text"])
    assert [e.message.text.content for e in await read(texts, 1)] == ["text one"]
    texts.cancel()


async def test_bad_names_and_ids_are_invalid_arguments(stack: Stack) -> None:
    stream = subscribe(stack, "bad group!", "c1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)[0] == "INVALID_CONSUMER_GROUP"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ack(stack, "ok-group", "not-an-id")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await ack(stack, "never-created", "1-0") == 0
    unknown = event_service_pb2_grpc.EventServiceStub(stack.channel).StreamEvents(
        ev.StreamEventsRequest(
            app_id=the_app(stack),
            consumer_group="ok-group",
            consumer_name="c1",
            start_position=cast(ev.StartPosition.ValueType, 99),  # a newer client's value
        ),
        metadata=bearer(TEAM_CREDENTIAL),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unknown.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_draining_ends_streams_with_unavailable(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    async with running_stack(settings, redis_client) as stack:
        stream = subscribe(stack, "g", "c")
        await deliver(stack, "before drain")
        await read(stream, 1)
        stopping = asyncio.create_task(stack.core.stop())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stream.read(), 10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await stopping


async def test_no_handler_outlives_stop_even_for_streams_whose_clients_left(
    redis_client: redis.Redis,
) -> None:
    """Streams cancelled by their clients just before stop: once stop returns, no handler
    runs (one that did could reopen a Redis pool that stop had closed)."""
    settings = make_settings(app_table(new_app_id()))
    async with running_stack(settings, redis_client) as stack:
        streams = [subscribe(stack, "left", f"c{n}") for n in range(40)]
        readers = [asyncio.ensure_future(stream.read()) for stream in streams]  # start them
        async with asyncio.timeout(30):
            while len(stack.core.calls) < 40:  # noqa: ASYNC110 - core exposes a count only
                await asyncio.sleep(0.05)
        for stream in streams:
            stream.cancel()
        await stack.core.stop()
        assert len(stack.core.calls) == 0
        await asyncio.gather(*readers, return_exceptions=True)


async def test_one_group_served_by_two_replicas(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    async with (
        running_stack(settings, redis_client) as one,
        running_stack(settings, redis_client) as two,
    ):
        on_one = subscribe(one, "shared", "r1", max_in_flight=3)
        on_two = subscribe(two, "shared", "r2", max_in_flight=3)
        await deliver(one, *(f"m{n}" for n in range(3)), first_id=100)
        await deliver(two, *(f"m{n}" for n in range(3, 6)), first_id=103)
        got = await read(on_one, 3) + await read(on_two, 3)
        assert sorted(e.message.text.content for e in got) == [f"m{n}" for n in range(6)]
        on_one.cancel()
        on_two.cancel()


ONE_SECOND = duration_pb2.Duration(seconds=1)


async def test_a_full_consumer_gets_its_own_expired_events_back(stack: Stack) -> None:
    """At max_in_flight, events held past the visibility timeout no longer count."""
    await deliver(stack, "slow job")
    stream = subscribe(stack, "full", "f1", max_in_flight=1, visibility_timeout=ONE_SECOND)
    (first,) = await read(stream, 1)
    (again,) = await read(stream, 1)  # never acknowledged: back after a second
    assert (again.event_id, again.delivery_count) == (first.event_id, 2)
    stream.cancel()


async def test_a_restarted_consumer_takes_back_what_it_held(stack: Stack) -> None:
    """A consumer that crashed holding max_in_flight events reconnects under its name."""
    await deliver(stack, "a", "b", first_id=41)
    crashed = subscribe(stack, "restarts", "r1", max_in_flight=2, visibility_timeout=ONE_SECOND)
    held = await read(crashed, 2)
    crashed.cancel()
    back = subscribe(stack, "restarts", "r1", max_in_flight=2, visibility_timeout=ONE_SECOND)
    again = await read(back, 2)
    assert sorted(e.event_id for e in again) == sorted(e.event_id for e in held)
    assert all(e.delivery_count == 2 for e in again)
    back.cancel()


async def test_an_event_is_held_for_its_holders_visibility_timeout(stack: Stack) -> None:
    """A consumer with a short timeout does not take an event a patient one holds."""
    await deliver(stack, "long job")
    patient = subscribe(stack, "mixed", "p1", visibility_timeout=duration_pb2.Duration(seconds=60))
    (held,) = await read(patient, 1)
    hasty = subscribe(stack, "mixed", "h1", visibility_timeout=ONE_SECOND)
    with pytest.raises(TimeoutError):
        await read(hasty, 1, timeout=2.5)
    assert await ack(stack, "mixed", held.event_id) == 1
    patient.cancel()
    hasty.cancel()


async def test_open_streams_do_not_starve_ingress(stack: Stack) -> None:
    """Each open stream holds a connection in a blocking read: they have their own pool."""
    streams = [subscribe(stack, "crowd", f"c{n}") for n in range(300)]
    await asyncio.sleep(1.5)  # every stream is in its blocking read
    await deliver(stack, *(f"push {n}" for n in range(20)), first_id=500)
    for stream in streams:
        stream.cancel()


async def test_expired_events_behind_a_long_pending_list_come_back(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """A patient consumer holds 1,000 events (12 h timeout); a crashed one held 3 more with
    a 1 s timeout. Each holder's list is searched with its own timeout, so the crashed
    consumer's events are found however many pending entries come before them (its name
    sorts after the patient's, so its list is searched last)."""
    stream_key = app_key(the_app(stack), "events")
    message = text_message(the_app(stack), "queued", "1").SerializeToString()
    pipe = redis_client.pipeline(transaction=False)
    for _ in range(1003):
        pipe.xadd(stream_key, {"m": message, "t": "text", "e": ""})
    await pipe.execute()
    twelve_hours = duration_pb2.Duration(seconds=12 * 3600)
    patient = subscribe(
        stack, "deep", "patient", max_in_flight=1000, visibility_timeout=twelve_hours
    )
    await read(patient, 1000, timeout=30)
    crashed = subscribe(stack, "deep", "x-crashed", max_in_flight=3, visibility_timeout=ONE_SECOND)
    lost = await read(crashed, 3)
    crashed.cancel()
    rescuer = subscribe(stack, "deep", "rescuer", visibility_timeout=ONE_SECOND)
    back = await read(rescuer, 3, timeout=20)
    assert sorted(e.event_id for e in back) == sorted(e.event_id for e in lost)
    assert all(e.delivery_count == 2 for e in back)
    patient.cancel()
    rescuer.cancel()


async def held_by(
    redis_client: redis.Redis,
    stack: Stack,
    group: str,
    consumer: str,
    count: int,
    *,
    waiting: int = 0,
) -> None:
    """`count` events delivered to `consumer` of a new `group` (as Redis itself would,
    faster than through the API), and `waiting` more never delivered."""
    stream_key = app_key(the_app(stack), "events")
    message = text_message(the_app(stack), "queued", "1").SerializeToString()
    await redis_client.xgroup_create(stream_key, group, id="0", mkstream=True)
    pipe = redis_client.pipeline(transaction=False)
    for _ in range(count + waiting):
        pipe.xadd(stream_key, {"m": message, "t": "text", "e": ""})
    await pipe.execute()
    await redis_client.xreadgroup(group, consumer, {stream_key: ">"}, count=count)


async def test_max_in_flight_holds_for_a_consumer_with_a_large_expired_backlog(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """A consumer name comes back to 2,100 expired events of its own, with 2,000 new ones
    waiting: it is handed at most max_in_flight events, old or new."""
    await held_by(redis_client, stack, "backlog", "big", 2100, waiting=2000)
    await asyncio.sleep(1.1)  # past the 1 s visibility timeout the consumer asks for
    stream = subscribe(stack, "backlog", "big", max_in_flight=1000, visibility_timeout=ONE_SECOND)
    delivered: set[str] = set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.8):  # within one claim interval: no event expires again
            while True:
                delivered.add((await stream.read()).event_id)
    stream.cancel()
    assert 0 < len(delivered) <= 1000


async def test_a_consumer_with_more_expired_events_than_one_page_is_not_stuck(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """2,016 expired events of its own and max_in_flight 16: it gets 16 of them back."""
    await held_by(redis_client, stack, "pages", "busy", 2016)
    await asyncio.sleep(1.1)
    stream = subscribe(stack, "pages", "busy", max_in_flight=16, visibility_timeout=ONE_SECOND)
    again = await read(stream, 16)
    assert all(e.delivery_count == 2 for e in again)
    stream.cancel()


async def test_events_trimmed_while_pending_are_let_go(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Retention trimmed them before anyone acknowledged: nothing left to deliver."""
    await deliver(stack, "a", "b", first_id=61)
    holder = subscribe(stack, "trimmed", "t1", visibility_timeout=ONE_SECOND)
    await read(holder, 2)
    holder.cancel()
    stream_key = app_key(the_app(stack), "events")
    await redis_client.xtrim(stream_key, maxlen=0)
    other = subscribe(stack, "trimmed", "t2", visibility_timeout=ONE_SECOND)
    for _ in range(100):
        summary = await redis_client.xpending(stream_key, "trimmed")
        if summary["pending"] == 0:
            break
        await asyncio.sleep(0.1)
    assert summary["pending"] == 0
    other.cancel()

"""Never lose a message: core down → spooled and acknowledged → replayed exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as redis
from tornado.httpclient import AsyncHTTPClient

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from edge.core_client import CoreClient
from edge.replayer import Replayer
from edge.spool import Spool, SpoolConflict, SpoolUnavailable
from tests.edge.signing import push_request, text_fields
from tests.support import (
    EDGE_CREDENTIAL,
    app_table,
    make_settings,
    new_app_id,
    running_stack,
    sample,
)
from wxplatform.clock import SystemClock
from wxplatform.config import Secret
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.core.server import create_server


async def post(url: str, body: bytes) -> tuple[int, bytes]:
    response = await AsyncHTTPClient().fetch(url, method="POST", body=body, raise_error=False)
    return response.code, response.body or b""


async def wait_for(predicate: object, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def replays_refused() -> float:
    return sample("wxp_edge_rejected_total", reason="replayed_request")


async def test_core_down_spools_then_replays_each_once(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    events = app_key(app.app_id, "events")
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        assert stack.edge is not None
        port = stack.core.port
        await stack.core.stop()
        spooled_before = sample("wxp_edge_spooled_total")
        pushes = [
            push_request(stack.edge_url, app, text_fields("hello", msg_id=str(7000 + n)))
            for n in range(3)
        ]
        # The same push twice (a WeChat retry while core is down) must still count once.
        pushes.append(pushes[0])
        for url, body in pushes:
            assert await post(url, body) == (200, b"success")
        assert sample("wxp_edge_spooled_total") - spooled_before == 4
        assert await stack.edge.deps.spool.depth() == 4
        assert await redis_client.xlen(events) == 0

        async def gauge_shows(depth: int) -> bool:  # read off the push path, within seconds
            return bool(sample("wxp_edge_spool_depth") == depth)

        await wait_for(lambda: gauge_shows(4))

        restarted = await create_server(
            settings, redis_client, listen=f"127.0.0.1:{port}", serve_metrics=False
        )
        try:

            async def drained() -> bool:
                return await stack.edge.deps.spool.depth() == 0  # type: ignore[union-attr]

            await wait_for(drained)
            assert await redis_client.xlen(events) == 3
            await wait_for(lambda: gauge_shows(0))
        finally:
            await restarted.stop()


async def test_full_spool_leaves_the_push_unacknowledged(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    # The smallest spool SQLite allows here (16 pages); config validation would refuse it.
    async with running_stack(settings, redis_client, with_edge=True, spool_max_bytes=1) as stack:
        await stack.core.stop()
        failures_before = sample("wxp_edge_spool_write_failures_total")
        statuses = []
        for n in range(200):
            fields = text_fields("x" * 2000, msg_id=str(9000 + n))
            statuses.append((await post(*push_request(stack.edge_url, app, fields)))[0])
            if statuses[-1] == 503:
                break
        assert statuses[0] == 200
        assert statuses[-1] == 503, "a full spool must not acknowledge"
        assert sample("wxp_edge_spool_write_failures_total") > failures_before


async def test_workers_sharing_a_spool_never_claim_the_same_entry(tmp_path: Path) -> None:
    """Two edge workers, one spool file: each entry is leased to one claimant at a time."""
    path = tmp_path / "spool.sqlite3"
    first, second = Spool(path, max_bytes=1 << 24), Spool(path, max_bytes=1 << 24)
    await first.open()
    await second.open()
    try:
        ids = [
            await (first if n % 2 else second).put("wxapp", f"r{n}", 100.0 + n, b"m")
            for n in range(10)
        ]
        claims = await asyncio.gather(
            first.claim(200.0, 4, lease_seconds=60),
            second.claim(200.0, 4, lease_seconds=60),
        )
        claimed = [e.id for batch in claims for e in batch]
        assert len(claimed) == 8
        assert len(set(claimed)) == 8  # disjoint
        rest = await first.claim(200.0, 10, lease_seconds=60)
        assert sorted(claimed + [e.id for e in rest]) == ids
        assert await second.claim(200.0, 10, lease_seconds=60) == []  # all leased
        # A lease runs out: the entry is due again (its claimant may have died).
        assert len(await second.claim(261.0, 10, lease_seconds=60)) == 10
        # Released entries are due again at once.
        await second.release(ids[:3], 300.0)
        assert [e.id for e in await first.claim(300.0, 10, lease_seconds=60)] == ids[:3]
    finally:
        await first.close()
        await second.close()


async def test_the_replayer_outlives_a_spool_that_fails(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A spool that cannot be read (here: not open yet) is retried, never the end of replay."""
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client) as stack:
        core = CoreClient(f"127.0.0.1:{stack.core.port}", Secret(EDGE_CREDENTIAL))
        spool = Spool(tmp_path / "spool.sqlite3", max_bytes=1 << 24)
        replayer = Replayer(spool, core, SystemClock(), max_age_seconds=3600)
        replayer.start()
        try:
            await asyncio.sleep(0.2)  # every read of the spool has failed so far
            await spool.open()
            message = inbound.InboundMessage(
                app_id=app.app_id, msg_id="4242", msg_type="text", from_user_name="oUser",
                to_user_name="gh_x", create_time=int(SystemClock().now()),
            )  # fmt: skip
            message.text.content = "hello"
            await spool.put(app.app_id, "r1", SystemClock().now(), message.SerializeToString())
            replayer.wake()

            async def replayed() -> bool:
                return bool(await redis_client.xlen(app_key(app.app_id, "events")) == 1)

            await wait_for(replayed)
        finally:
            await replayer.stop()  # a clean stop, not the spool's old error
            await core.close()
            await spool.close()


async def test_a_replay_of_a_spooled_push_with_another_body_is_refused(
    redis_client: redis.Redis,
) -> None:
    """A plaintext signature covers no body: a captured URL replayed with a body of its
    own while the genuine push waits in the spool must not win over it at core."""
    settings = make_settings(app_table(new_app_id(), auto_reply=[], default_reply=None))
    (app,) = settings.apps.values()
    events = app_key(app.app_id, "events")
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        assert stack.edge is not None
        port = stack.core.port
        await stack.core.stop()
        url, genuine = push_request(stack.edge_url, app, text_fields("genuine", msg_id="8101"))
        assert await post(url, genuine) == (200, b"success")  # spooled
        _, forged = push_request(stack.edge_url, app, text_fields("forged", msg_id="8102"))
        restarted = await create_server(
            settings, redis_client, listen=f"127.0.0.1:{port}", serve_metrics=False
        )
        try:
            refused_before = sample("wxp_edge_rejected_total", reason="replayed_request")
            assert (await post(url, forged))[0] == 403
            assert (
                sample("wxp_edge_rejected_total", reason="replayed_request") == refused_before + 1
            )
            assert await post(url, genuine) == (200, b"success")  # WeChat's retry is fine

            async def drained() -> bool:
                return await stack.edge.deps.spool.depth() == 0  # type: ignore[union-attr]

            await wait_for(drained)
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await redis_client.xrange(events)
            )
            stored = [inbound.InboundMessage.FromString(fields[b"m"]) for _, fields in entries]
            assert [m.text.content for m in stored] == ["genuine"]
        finally:
            await restarted.stop()


# The schema of the first release: no `signed` / `body_sha256` columns.
_FIRST_SCHEMA = """
CREATE TABLE spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    received_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL    NOT NULL,
    message     BLOB    NOT NULL
);
CREATE INDEX spool_due ON spool (next_try_at, id);
"""


def first_release_spool(path: Path, *, pages: int | None = None) -> int:
    """A spool file as the first release left it; filled up to `pages` if given."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    if pages is not None:
        db.execute(f"PRAGMA max_page_count={pages}")
    db.executescript(_FIRST_SCHEMA)
    rows = 0
    try:
        while pages is not None or rows < 3:
            db.execute(
                "INSERT INTO spool (app_id, request_id, received_at, next_try_at, message)"
                " VALUES ('wxold', ?, 1.0, 1.0, ?)",
                (f"r{rows}", b"m" * 2000),
            )
            rows += 1
    except sqlite3.OperationalError as exc:  # the cap: "database or disk is full"
        if "full" not in str(exc):
            raise
    db.close()
    return rows


async def test_an_older_spool_file_is_upgraded_by_workers_starting_together(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    first_release_spool(path)
    spools = [Spool(path, max_bytes=1 << 24) for _ in range(4)]
    await asyncio.gather(*(spool.open() for spool in spools))  # one thread each: a race
    try:
        entries = await spools[0].claim(10.0, 10, lease_seconds=60)
        assert [e.request_id for e in entries] == ["r0", "r1", "r2"]
        await spools[1].put("wxold", "r3", 2.0, b"m", signed="5:n", body_sha256="aa")
        assert await spools[2].conflicts("wxold", "5:n", "bb")
    finally:
        for spool in spools:
            await spool.close()


async def test_an_older_spool_filled_to_its_cap_still_opens(tmp_path: Path) -> None:
    """After a long outage the spool is full; the upgrade's index must still be built."""
    path = tmp_path / "spool.sqlite3"
    pages = 256
    rows = first_release_spool(path, pages=pages)
    page_size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    spool = Spool(path, max_bytes=pages * page_size)
    await spool.open()
    try:
        assert await spool.depth() == rows
        assert len(await spool.claim(10.0, rows, lease_seconds=60)) == rows
    finally:
        await spool.close()


async def test_a_conflicting_push_is_refused_by_the_write_itself(tmp_path: Path) -> None:
    """Two pushes with one (timestamp, nonce) at once: the spool keeps only the first."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=1 << 24)
    await spool.open()
    try:
        await spool.put("wxapp", "r1", 1.0, b"a", signed="100:n1", body_sha256="aa")
        with pytest.raises(SpoolConflict):
            await spool.put("wxapp", "r2", 1.0, b"b", signed="100:n1", body_sha256="bb")
        await spool.put("wxapp", "r3", 1.0, b"a", signed="100:n1", body_sha256="aa")  # a retry
        await spool.put("wxother", "r4", 1.0, b"b", signed="100:n1", body_sha256="bb")
        assert await spool.depth() == 3
    finally:
        await spool.close()


async def test_a_spool_write_waits_no_longer_than_the_push_budget(
    redis_client: redis.Redis,
) -> None:
    """Another worker holds the spool's write lock: the push is refused (503, so WeChat
    retries) within its budget, not answered after WeChat stopped listening."""
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True, budget_seconds=1.0) as stack:
        assert stack.edge is not None
        await stack.core.stop()
        holder = sqlite3.connect(stack.edge.deps.spool.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another worker, in the middle of a write
        try:
            started = asyncio.get_running_loop().time()
            # Three at once: each waits its turn on the spool's thread, within its budget.
            pushes = [
                push_request(stack.edge_url, app, text_fields("locked out", msg_id=str(n)))
                for n in range(3)
            ]
            answers = await asyncio.gather(*(post(url, body) for url, body in pushes))
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [status for status, _ in answers] == [503, 503, 503]
        assert elapsed < 2.5  # the budget (1 s), with room for a slow machine
        assert await stack.edge.deps.spool.depth() == 0


async def test_a_push_queued_behind_the_replayers_write_keeps_its_deadline(
    tmp_path: Path,
) -> None:
    """The replayer's writes share the spool's thread with pushes: while another worker
    holds the lock they give up quickly, so a push's deadline still holds."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 24)
    await spool.open()
    entry = await spool.put("wxapp", "r1", 1.0, b"m")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another worker, in the middle of a write
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        removing = asyncio.ensure_future(spool.remove(entry))
        await asyncio.sleep(0)
        with pytest.raises(SpoolUnavailable):
            await spool.put("wxapp", "r2", 2.0, b"m", deadline=time.monotonic() + 0.5)
        assert loop.time() - started < 2.0  # not the 5 s a write may otherwise wait
        with pytest.raises(SpoolUnavailable):
            await removing  # the replayer tries again later
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await spool.close()

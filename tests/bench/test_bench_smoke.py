"""Smoke test of the benchmark suite (`python -m bench`): no timing assertions at all.

It checks that the pushes the load generator pre-builds are the ones the simulator
would send, and that a short run against the baseline server in its own process gets
HTTP 200 with the configured reply and counts something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.client import HttpConnection
from bench.load import closed_loop, open_loop
from bench.procs import ServerProcess
from bench.pushes import PushFactory
from bench.spec import KEYWORD, REPLY, Mode, new_spec
from wxplatform.sim.messages import build_push, text_message
from wxplatform.sim.replies import check_reply

pytestmark = pytest.mark.timeout(60)

PREFIX = b"0123456789abcdef"


@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_prebuilt_pushes_are_what_the_simulator_sends(mode: Mode) -> None:
    app = new_spec().app(mode)
    factory = PushFactory(app, "127.0.0.1", 8080, random_prefix=lambda: PREFIX)
    push = factory.build_one(timestamp=1_700_000_000, nonce="123456789", msg_id=10**18 + 7,
                             openid="oBench1")  # fmt: skip
    fields = text_message(push.to_user, "oBench1", KEYWORD, 10**18 + 7, 1_700_000_000)
    expected = build_push(app, "http://127.0.0.1:8080", fields, timestamp=1_700_000_000,
                          nonce="123456789", random_prefix=PREFIX)  # fmt: skip

    head, body = push.wire.split(b"\r\n\r\n", 1)
    request_line = head.split(b"\r\n", 1)[0].decode()
    assert request_line == f"POST {expected.url.removeprefix('http://127.0.0.1:8080')} HTTP/1.1"
    assert body == expected.body
    assert f"Content-Length: {len(body)}".encode() in head


@pytest.mark.parametrize("mode", ["plaintext", "safe"])
async def test_load_generator_against_the_baseline(tmp_path: Path, mode: Mode) -> None:
    spec = new_spec()
    spec.dump(tmp_path / "spec.json")
    app = spec.app(mode)
    with ServerProcess("baseline", tmp_path / "spec.json", tmp_path / "server") as server:
        factory = PushFactory(app, "127.0.0.1", server.port)
        # One exchange by hand: the reply is the configured text, addressed back.
        push = factory.build(1)[0]
        conn = await HttpConnection.open("127.0.0.1", server.port)
        try:
            status, body = await conn.exchange(push.wire)
        finally:
            await conn.aclose()
        verdict = check_reply(
            app, status, body, {"FromUserName": push.openid, "ToUserName": push.to_user}
        )
        assert verdict.error is None
        assert verdict.reply is not None
        assert verdict.reply["Content"] == REPLY

        closed = await closed_loop(
            "127.0.0.1", server.port, app, factory.build(4000),
            connections=4, warmup=0.1, duration=0.9, server_pid=server.pid,
        )  # fmt: skip
        opened = await open_loop(
            "127.0.0.1", server.port, app, factory.build(200),
            rate=200, warmup=0.1, duration=0.4,
        )  # fmt: skip

    for result in (closed, opened):
        assert result.errors == {}
        assert result.requests > 0
        assert result.rate > 0
        assert result.verified > 0
        assert result.invalid == 0
        assert result.p50_ms > 0


def test_sends_scenario_counts_sends_and_redis_commands(tmp_path: Path) -> None:
    from bench.sends import SendsPlan, judge_sends, run_sends

    result = run_sends(tmp_path, SendsPlan(concurrency=4, warmup=0.1, duration=0.3, rounds=1))
    assert result.echo.errors == {}
    assert result.sends.errors == {}
    assert result.echo.requests > 0
    assert result.sends.requests > 0
    assert result.per_send is not None
    assert result.per_send > 0
    assert [row.scenario for row in judge_sends(result)] == ["echo", "sends", "redis"]


@pytest.mark.parametrize("kind", ["edge2", "stack2"])
async def test_two_worker_kinds_share_one_port(tmp_path: Path, kind: str) -> None:
    """The whole-box servers: two edge workers on one port, both answering."""
    spec = new_spec()
    spec.dump(tmp_path / "spec.json")
    app = spec.app("plaintext")
    with ServerProcess(kind, tmp_path / "spec.json", tmp_path / "server") as server:
        opened = await open_loop(
            "127.0.0.1", server.port, app, PushFactory(app, "127.0.0.1", server.port).build(300),
            rate=300, warmup=0.1, duration=0.6,
        )  # fmt: skip
        worker = json.loads(
            (tmp_path / "server" / "worker" / "edge-worker.log").read_text().splitlines()[-1]
        )
    assert opened.errors == {}
    assert opened.verified > 0
    assert opened.invalid == 0
    assert worker["msg"] == "edge serving"
    assert worker["port"] == server.port  # the child worker listens on the same port


def test_identity_scenario_measures_sessions_and_logins(tmp_path: Path) -> None:
    from bench.identity import judge_identity, run_identity
    from bench.sends import SendsPlan

    plan = SendsPlan(concurrency=4, warmup=0.1, duration=0.3, rounds=1)
    result = run_identity(tmp_path, plan)
    for phase in (result.echo, result.get, result.get_floor, result.floor, result.login):
        assert phase.errors == {}
        assert phase.requests > 0
    assert result.get_trips == 1.0
    assert 0 < result.refresh_trips <= 2.0
    names = [row.scenario for row in judge_identity(result)]
    assert names == [
        "echo", "session-floor", "get-session", "floor", "code2session", "redis-sessions"
    ]  # fmt: skip

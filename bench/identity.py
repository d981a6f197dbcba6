"""The identity scenario: sessions against the gRPC echo, mini-program login against its floor.

Processes, each started by the driver (`run_identity`), pinned like those of `sends`:

* `sim`, `core`, `echo`: as in `bench/sends.py` (core with a mini program and a vault key);
* `floor`: a bare grpc.aio server whose one unary RPC makes one pooled aiohttp call to
  the same simulator's `sns/jscode2session` and returns WeChat's answer: the least any
  `Code2Session` must do, beside it;
* `load`: N concurrent unary calls per target in interleaved rounds: echo, GetSession
  (on sessions made before the rounds), Code2Session and the floor (each with a `wx.login`
  code of its own, minted through the simulator's control API before the rounds).

Redis round trips of GetSession and RefreshSession: `MONITOR` on core's redis-server
while 100 of each run one after another (a script call is one round trip).

`python -m bench.identity floor --spec FILE --workdir DIR` runs the floor;
`python -m bench.identity load` reads a job on stdin, writes results on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import merge_rounds
from bench.procs import ServerProcess
from bench.report import Row
from bench.sends import (
    ECHO_METHOD,
    SendsPlan,
    closed_window,
    new_sends_spec,
    round_trips,
    run_load,
    serve_until_stopped,
    start_servers,
    write_spec,
)
from bench.stats import PhaseResult

__all__ = ["IdentityResult", "judge_identity", "main", "run_identity"]

GET_RATIO = 0.6  # GetSession calls per core CPU second ≥ 0.6× the echo's
LOGIN_RATIO = 0.8  # Code2Session per core CPU second ≥ 0.8× the floor's
GET_TRIPS, REFRESH_TRIPS = 1.0, 2.0
FLOOR_METHOD = "/bench.Floor/Login"
MINI_OPENID = "oBenchMini0000000000000001"
_SESSIONS = 200
_MONITORED = 100
_PHASES = ("echo", "get", "get_floor", "floor", "login")
_CODES_PER_SECOND = 3000  # more than either login target manages per second here


def new_identity_spec(log_level: str = "INFO") -> dict[str, Any]:
    """The sends spec, plus a mini program, a vault key and session/login grants."""
    spec = new_sends_spec(log_level)
    config = spec["config"]
    mini = "wxbenchmini" + spec["app_id"][-8:]
    config["apps"].append(
        {
            "app_id": mini,
            "kind": "mini_program",
            "encryption": "plaintext",
            "data_format": "json",
            "app_secret": "secret" + os.urandom(8).hex(),
            "token": "tok" + os.urandom(8).hex(),
        }
    )
    config["vault"] = {
        "keys": [{"id": "bench", "key": "YmVuY2gta2V5LW9mLWV4YWN0bHktMzItYnl0ZXMhISE="}]
    }
    config["callers"][0]["allow"] = [
        {"apps": [spec["app_id"], mini], "rpcs": ["SessionService/*", "OAuthService/Code2Session"]}
    ]
    spec["mini_app_id"] = mini
    return spec


# -- the floor ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _floor(spec: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    import aiohttp
    import grpc

    mini = next(a for a in spec["config"]["apps"] if a["app_id"] == spec["mini_app_id"])
    url = spec["config"]["wechat"]["api_base"] + "/sns/jscode2session"
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

    async def login(request: bytes, context: Any) -> bytes:
        params = {
            "appid": mini["app_id"],
            "secret": mini["app_secret"],
            "js_code": request.decode(),
            "grant_type": "authorization_code",
        }
        async with http.get(url, params=params) as response:
            return await response.read()

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Login": grpc.unary_unary_rpc_method_handler(login)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield {"port": port}
    finally:
        await server.stop(1.0)
        await http.close()


@contextlib.asynccontextmanager
async def _session_floor(spec: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """GetSession's floor on this stack: a grpc.aio handler making one pooled redis-py
    HMGET and answering with a Session; `floor_interceptors` in the spec adds core's chain
    (request id and access log, error mapping, caller authentication)."""
    import grpc
    import redis.asyncio as redis

    from acme.wxplatform.v1 import session_service_pb2 as spb
    from wxplatform.config import parse_settings
    from wxplatform.core.servicers.interceptors import default_interceptors

    settings = parse_settings(spec["config"], source="<bench floor>")
    client = redis.from_url(spec["floor_redis"])
    key = f"wxp:{{{spec['app_id']}}}:bench-floor"
    fields = ("id", "openid", "unionid", "attrs", "created", "expires", "absolute", "idle")
    await client.hset(key, mapping=dict.fromkeys(fields, "1"))

    async def get(request: spb.GetSessionRequest, context: Any) -> spb.GetSessionResponse:
        values = await client.hmget(key, fields)
        return spb.GetSessionResponse(
            session=spb.Session(session_id=str(values[0]), app_id=request.app_id)
        )

    chain = default_interceptors(settings.callers) if spec.get("floor_interceptors") else None
    server = grpc.aio.server(interceptors=chain)
    handler = grpc.method_handlers_generic_handler(
        "acme.wxplatform.v1.SessionService",
        {
            "GetSession": grpc.unary_unary_rpc_method_handler(
                get,
                request_deserializer=spb.GetSessionRequest.FromString,
                response_serializer=spb.GetSessionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield {"port": port}
    finally:
        await server.stop(1.0)
        await client.aclose()


async def _serve_floor(kind: str, spec: dict[str, Any], max_seconds: float) -> None:
    running = _floor(spec) if kind == "floor" else _session_floor(spec)
    await serve_until_stopped(running, max_seconds)


# -- the load process -----------------------------------------------------------------


@dataclass(frozen=True)
class IdentityJob:
    """What the load process needs."""

    spec_path: str
    core_port: int
    core_pid: int
    echo_port: int
    echo_pid: int
    floor_port: int
    floor_pid: int
    session_floor_port: int
    session_floor_pid: int
    sim_url: str
    sim_pid: int
    redis_url: str
    plan: SendsPlan
    cpu: int | None = None


@dataclass
class IdentityResult:
    """Each target's merged results, and Redis commands per GetSession / RefreshSession."""

    echo: PhaseResult
    get: PhaseResult
    get_floor: PhaseResult
    floor: PhaseResult
    login: PhaseResult
    get_trips: float
    refresh_trips: float

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k).to_json() for k in _PHASES},
            "get_trips": self.get_trips,
            "refresh_trips": self.refresh_trips,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdentityResult:
        phases = {k: PhaseResult.from_json(data[k]) for k in _PHASES}
        return cls(**phases, get_trips=data["get_trips"], refresh_trips=data["refresh_trips"])


async def _mint(sim_url: str, app_id: str, count: int) -> list[str]:
    import aiohttp

    codes: list[str] = []
    async with aiohttp.ClientSession() as http:
        while len(codes) < count:
            batch = min(count - len(codes), 50_000)
            body = {"app_id": app_id, "openid": MINI_OPENID, "count": batch}
            async with http.post(f"{sim_url}/_sim/mini_program/login_codes", json=body) as r:
                codes += (await r.json())["codes"]
    return codes


async def _run_load(job: IdentityJob, spec: dict[str, Any]) -> IdentityResult:
    import grpc
    import redis.asyncio as redis

    from acme.wxplatform.v1 import oauth_service_pb2 as opb
    from acme.wxplatform.v1 import oauth_service_pb2_grpc, session_service_pb2_grpc
    from acme.wxplatform.v1 import session_service_pb2 as spb

    metadata = (("authorization", f"Bearer {spec['credential']}"),)
    app, mini = spec["app_id"], spec["mini_app_id"]
    core = grpc.aio.insecure_channel(f"127.0.0.1:{job.core_port}")
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{job.echo_port}")
    floor_channel = grpc.aio.insecure_channel(f"127.0.0.1:{job.floor_port}")
    session_floor = grpc.aio.insecure_channel(f"127.0.0.1:{job.session_floor_port}")
    floor_sessions = session_service_pb2_grpc.SessionServiceStub(session_floor)
    client = redis.from_url(job.redis_url)
    sessions = session_service_pb2_grpc.SessionServiceStub(core)
    oauth = oauth_service_pb2_grpc.OAuthServiceStub(core)
    echo_rpc = echo_channel.unary_unary(ECHO_METHOD)
    floor_rpc = floor_channel.unary_unary(FLOOR_METHOD)
    per_target = int(job.plan.rounds * (job.plan.warmup + job.plan.duration) * _CODES_PER_SECOND)
    login_codes = iter(await _mint(job.sim_url, mini, per_target + 10))
    floor_codes = iter(await _mint(job.sim_url, mini, per_target + 10))
    tokens = [
        (
            await sessions.CreateSession(
                spb.CreateSessionRequest(app_id=app, openid=f"oBenchUser{i:016d}"),
                metadata=metadata,
            )
        ).session_token
        for i in range(_SESSIONS)
    ]
    payload = spb.GetSessionRequest(app_id=app, session_token=tokens[0]).SerializeToString()

    async def echo() -> object:
        return await echo_rpc(payload, timeout=10)

    async def get() -> object:
        request = spb.GetSessionRequest(app_id=app, session_token=random.choice(tokens))  # noqa: S311
        return await sessions.GetSession(request, metadata=metadata, timeout=10)

    async def get_floor() -> object:
        request = spb.GetSessionRequest(app_id=app, session_token=random.choice(tokens))  # noqa: S311
        return await floor_sessions.GetSession(request, metadata=metadata, timeout=10)

    async def refresh() -> object:
        request = spb.RefreshSessionRequest(app_id=app, session_token=random.choice(tokens))  # noqa: S311
        return await sessions.RefreshSession(request, metadata=metadata, timeout=10)

    async def login() -> object:
        request = opb.Code2SessionRequest(app_id=mini, js_code=next(login_codes))
        return await oauth.Code2Session(request, metadata=metadata, timeout=10)

    async def floor() -> object:
        return await floor_rpc(next(floor_codes).encode(), timeout=10)

    targets = {
        "echo": (echo, job.echo_pid),
        "get": (get, job.core_pid),
        "get_floor": (get_floor, job.session_floor_pid),
        "floor": (floor, job.floor_pid),
        "login": (login, job.core_pid),
    }
    rounds: dict[str, list[PhaseResult]] = {name: [] for name in targets}
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    try:
        await login()  # the first login warms core's HTTP pool: not part of any round
        for _ in range(job.plan.rounds):
            for name, (call, pid) in targets.items():
                result, lat, _done = await closed_window(call, job.plan, pid, job.sim_pid)
                rounds[name].append(result)
                latencies[name] += lat
        get_trips = sum((await round_trips(client, get, _MONITORED)).values()) / _MONITORED
        refresh_trips = sum((await round_trips(client, refresh, _MONITORED)).values()) / _MONITORED
    finally:
        for channel in (core, echo_channel, floor_channel, session_floor):
            await channel.close()
        await client.aclose()
    merged = {name: merge_rounds(rounds[name], latencies[name]) for name in targets}
    return IdentityResult(**merged, get_trips=get_trips, refresh_trips=refresh_trips)


def _load_main() -> int:
    data = json.loads(sys.stdin.read())
    job = IdentityJob(**{**data, "plan": SendsPlan(**data["plan"])})
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})
    spec = json.loads(Path(job.spec_path).read_text(encoding="utf-8"))
    result = asyncio.run(_run_load(job, spec))
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    return 0


# -- the driver's side ----------------------------------------------------------------


def run_identity(tmp: Path, plan: SendsPlan, log_level: str = "INFO") -> IdentityResult:
    """Start sim, core, echo and the floors, measure them with a load process, stop them."""
    spec = new_identity_spec(log_level)
    spec_path = tmp / "identity-spec.json"
    write_spec(spec_path, spec)
    with contextlib.ExitStack() as stack:
        up, servers = start_servers(
            stack, spec, spec_path, tmp / "identity", extra=[("floor", "bench.identity")]
        )
        core, echo, floor = up.core, up.echo, servers["floor"]
        # The session floor reads core's Redis, known only once core runs.
        spec["floor_redis"] = core.ready["redis"]
        write_spec(spec_path, spec)
        session_floor = ServerProcess(
            "session-floor",
            spec_path,
            tmp / "identity" / "session-floor",
            cpu=up.server_cpu,
            module="bench.identity",
        )
        stack.callback(session_floor.stop)
        session_floor.start()
        job = IdentityJob(
            str(spec_path), core.port, core.pid, echo.port, echo.pid, floor.port, floor.pid,
            session_floor.port, session_floor.pid,
            str(up.sim.ready["url"]), up.sim.pid, str(core.ready["redis"]), plan, up.load_cpu,
        )  # fmt: skip
        timeout = plan.rounds * 5 * (plan.warmup + plan.duration + 5) + 120
        return IdentityResult.from_json(run_load("bench.identity", job, timeout))


def _ratio(row: Row, reference: PhaseResult, minimum: float) -> None:
    r = row.result
    assert r is not None
    if reference.rate > 0:
        row.ratio = r.rate / reference.rate
        if r.http_cpu and reference.http_cpu:
            row.core_ratio = (r.rate / r.http_cpu) / (reference.rate / reference.http_cpu)
    if r.errors:
        row.notes.append("errors: " + ", ".join(f"{k}×{v}" for k, v in sorted(r.errors.items())))
    ok = not r.errors and row.core_ratio is not None and row.core_ratio >= minimum
    row.verdict = "PASS" if ok else "MISS"


def judge_identity(result: IdentityResult | None, failure: str | None = None) -> list[Row]:
    """Rows: echo and floor (references), GetSession and Code2Session, Redis trips."""
    mode, shape = "grpc", "closed"
    names = (
        "echo", "session-floor", "get-session", "floor", "code2session", "redis-sessions"
    )  # fmt: skip
    if result is None:
        return [
            Row(n, mode, shape, failure=failure or "did not run", verdict="FAIL") for n in names
        ]
    echo = Row("echo", mode, shape, result=result.echo, target="reference", verdict="ref")
    echo.ratio = echo.core_ratio = 1.0
    get_floor = Row(
        "session-floor", mode, shape, result=result.get_floor, target="floor", verdict="ref"
    )
    _ratio(get_floor, result.echo, 0.0)
    get_floor.verdict = "ref"
    get_floor.notes.append("a grpc.aio handler with one pooled HMGET, no interceptors")
    get = Row("get-session", mode, shape, result=result.get, target=f"×/core ≥ {GET_RATIO:g}")
    _ratio(get, result.echo, GET_RATIO)
    if get.core_ratio is not None and get_floor.core_ratio:
        get.notes.append(f"{get.core_ratio / get_floor.core_ratio:.2f}× its floor per core")
    floor = Row("floor", mode, shape, result=result.floor, target="reference", verdict="ref")
    floor.ratio = floor.core_ratio = 1.0
    floor.notes.append("one pooled aiohttp call to the same simulator per RPC")
    login = Row(
        "code2session", mode, shape, result=result.login, target=f"×floor/core ≥ {LOGIN_RATIO:g}"
    )
    _ratio(login, result.floor, LOGIN_RATIO)
    trips = Row("redis-sessions", mode, "per call", target="Get = 1, Refresh ≤ 2")
    ok = result.get_trips <= GET_TRIPS and result.refresh_trips <= REFRESH_TRIPS
    trips.verdict = "PASS" if ok else "MISS"
    trips.notes.append(
        f"GetSession {result.get_trips:.2f}, RefreshSession {result.refresh_trips:.2f} round"
        " trips per call (MONITOR; a script call counts as one)"
    )
    return [echo, get_floor, get, floor, login, trips]


def identity_json(result: IdentityResult | None) -> dict[str, Any] | None:
    """The Redis figures and targets for the JSON report (the rows carry the rest)."""
    if result is None:
        return None
    return {
        "targets": {
            "get_session_ratio_min_per_core": GET_RATIO,
            "code2session_ratio_of_floor_min_per_core": LOGIN_RATIO,
            "get_session_round_trips": GET_TRIPS,
            "refresh_session_round_trips_max": REFRESH_TRIPS,
        },
        "get_session_round_trips": round(result.get_trips, 3),
        "refresh_session_round_trips": round(result.refresh_trips, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`load` (job on stdin) or the `floor` server."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        return _load_main()
    parser = argparse.ArgumentParser(prog="python -m bench.identity")
    parser.add_argument("kind", choices=("floor", "session-floor"))
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    asyncio.run(_serve_floor(args.kind, spec, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

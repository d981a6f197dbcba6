"""The outbound scenario `sends`: SendTemplate throughput against a trivial gRPC echo.

Processes, each started by the driver (`run_sends`):

* `core`: core (`create_server`) on an embedded redis-server (its child), pinned to the
  server CPU like every server of the suite, pointed at
* `sim`: the WeChat simulator, standing in for WeChat: its CPU is not core's, so it is
  pinned away from the server CPU (to the load CPU when there are only two);
* `echo`: a bare grpc.aio server with one unary RPC returning its request (bytes in,
  bytes out, no interceptors), pinned to the server CPU: the reference;
* `load`: N concurrent unary calls per target for a fixed window, in interleaved
  rounds (echo, sends, echo, sends …); every SendTemplate has a unique idempotency key.

Redis round trips per send: after the rounds, `MONITOR` on core's redis-server watches
200 SendTemplate calls made one after another and counts the commands clients sent
(a script call, EVALSHA, is one round trip; the commands it runs inside Redis are not,
which is why `INFO stats` `total_commands_processed`, counting those too, is not used).

`python -m bench.sends KIND --spec FILE --workdir DIR` runs one server (KIND: core,
sim, echo); `python -m bench.sends load` reads a job on stdin, writes results on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.load import _Meters, merge_rounds
from bench.procs import ROOT, BenchProcessError, ServerProcess, cpu_plan
from bench.report import Row
from bench.stats import PhaseResult
from wxplatform.config import Settings, hash_credential, parse_settings

__all__ = [
    "ECHO_METHOD",
    "REDIS_MAX_PER_SEND",
    "SENDS_RATIO",
    "SendsPlan",
    "SendsResult",
    "Servers",
    "closed_window",
    "judge_sends",
    "main",
    "round_trips",
    "run_load",
    "run_sends",
    "serve_until_stopped",
    "start_servers",
    "write_spec",
]

SENDS_RATIO = 0.6  # SendTemplate calls per core CPU second ≥ 0.6× echo's per CPU second
REDIS_MAX_PER_SEND = 3.0
ECHO_METHOD = "/bench.Echo/Echo"
TEMPLATE_ID = "TPL_BENCH"
FOLLOWER = "oBenchFollower000000000001"
KINDS = ("core", "sim", "echo")


@dataclass(frozen=True)
class SendsPlan:
    """Concurrent calls in flight, and per round a warm-up and a measured window."""

    concurrency: int = 32
    warmup: float = 0.3
    duration: float = 1.0
    rounds: int = 6


FULL_PLAN = SendsPlan()
QUICK_PLAN = SendsPlan(rounds=2, warmup=0.2, duration=0.6)


# -- the spec: one app, one caller ----------------------------------------------------


def new_sends_spec(log_level: str = "INFO") -> dict[str, Any]:
    """Config document, caller credential and app id shared by the processes of a run."""
    credential = "bench-sender-" + secrets.token_hex(12)
    app_id = "wxbenchsend" + secrets.token_hex(4)
    config: dict[str, Any] = {
        "log_level": log_level,
        "core": {"drain_seconds": 1.0},
        "apps": [
            {
                "app_id": app_id,
                "kind": "official_account",
                "encryption": "plaintext",
                "app_secret": "secret" + secrets.token_hex(8),
                "token": "tok" + secrets.token_hex(8),
                "send_rate_per_second": 100_000,  # the maximum: never the limit here
            }
        ],
        "callers": [
            {
                "name": "bench",
                "token_sha256": hash_credential(credential),
                "allow": [{"apps": [app_id], "rpcs": ["MessagingService/SendTemplate"]}],
            }
        ],
    }
    parse_settings(config, source="<bench sends>")  # fail here, not in a child
    return {"config": config, "credential": credential, "app_id": app_id}


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    path.write_text(json.dumps(spec), encoding="utf-8")
    path.chmod(0o600)


def _settings(spec: dict[str, Any]) -> Settings:
    return parse_settings(json.loads(json.dumps(spec["config"])), source="<bench sends>")


# -- the servers ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _sim(spec: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    from wxplatform.sim import WeChatSimulator

    logging.basicConfig(level=logging.WARNING)  # no access log line per send
    app_id = spec["app_id"]
    sim = WeChatSimulator(_settings(spec).apps)
    port = await sim.start()
    sim.add_template(app_id, TEMPLATE_ID, "template", ["keyword1"])
    sim.set_user(app_id, FOLLOWER, follows=True)
    sim.set_callback_url(app_id, None)  # no result events
    try:
        yield {"port": port, "url": sim.base_url}
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def _core(spec: dict[str, Any], workdir: Path) -> AsyncIterator[dict[str, Any]]:
    from bench.serve import core_on_embedded_redis
    from wxplatform.logs import configure_logging

    settings = _settings(spec)
    configure_logging("core", settings.log_level)
    async with core_on_embedded_redis(settings, workdir) as (port, url):
        yield {"port": port, "redis": url}


async def _echo_handler(request: bytes, context: Any) -> bytes:
    return request


@contextlib.asynccontextmanager
async def _echo() -> AsyncIterator[dict[str, Any]]:
    import grpc

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo_handler)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield {"port": port}
    finally:
        await server.stop(1.0)


async def serve_until_stopped(
    running: contextlib.AbstractAsyncContextManager[dict[str, Any]], max_seconds: float
) -> None:
    """Start a server, print its ready line (with the pid) and serve until told to stop."""
    from bench.serve import _watch_for_stop

    stop = asyncio.Event()
    _watch_for_stop(stop, max_seconds)
    async with running as ready:
        sys.stdout.write(json.dumps({**ready, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        await stop.wait()


async def _serve(kind: str, spec: dict[str, Any], workdir: Path, max_seconds: float) -> None:
    running = _sim(spec) if kind == "sim" else _core(spec, workdir) if kind == "core" else _echo()
    await serve_until_stopped(running, max_seconds)


# -- the load process -----------------------------------------------------------------


@dataclass(frozen=True)
class SendsJob:
    """What the load process needs."""

    spec_path: str
    core_port: int
    core_pid: int
    echo_port: int
    echo_pid: int
    sim_pid: int
    redis_url: str
    plan: SendsPlan
    cpu: int | None = None


@dataclass
class SendsResult:
    """Both targets' merged results, and Redis commands over SendTemplate calls."""

    echo: PhaseResult
    sends: PhaseResult
    redis_commands: int = 0
    redis_sends: int = 0
    commandstats: dict[str, int] = field(default_factory=dict)  # calls by command

    @property
    def per_send(self) -> float | None:
        """Redis commands (round trips) per completed SendTemplate."""
        return self.redis_commands / self.redis_sends if self.redis_sends else None

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (inverse: `from_json`)."""
        return {
            "echo": self.echo.to_json(),
            "sends": self.sends.to_json(),
            "redis_commands": self.redis_commands,
            "redis_sends": self.redis_sends,
            "commandstats": self.commandstats,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SendsResult:
        """Read what `to_json` wrote."""
        return cls(
            PhaseResult.from_json(data["echo"]),
            PhaseResult.from_json(data["sends"]),
            data["redis_commands"],
            data["redis_sends"],
            data["commandstats"],
        )


Call = Callable[[], Awaitable[object]]


async def closed_window(
    call: Call, plan: SendsPlan, server_pid: int, sim_pid: int | None
) -> tuple[PhaseResult, list[float], int]:
    """`plan.concurrency` callers for warm-up + window; (result, latencies, calls done)."""
    import grpc

    meters = _Meters(server_pid)
    sim = CpuMeter([sim_pid] if sim_pid else [], descendants=False)
    result = PhaseResult("closed", plan.concurrency, 0.0, plan.duration)
    latencies: list[float] = []
    done = 0
    clock = time.perf_counter
    t0 = clock()
    start, end = t0 + plan.warmup, t0 + plan.warmup + plan.duration
    meters.window(plan.warmup, plan.duration)
    loop = asyncio.get_running_loop()
    loop.call_later(plan.warmup, sim.start)
    loop.call_later(plan.warmup + plan.duration, sim.stop)

    async def caller() -> None:
        nonlocal done
        while (began := clock()) < end:
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                result.errors[name] = result.errors.get(name, 0) + 1
                continue
            finished = clock()
            done += 1
            if start <= finished <= end:
                latencies.append(finished - began)

    await asyncio.gather(*(caller() for _ in range(plan.concurrency)))
    await asyncio.sleep(max(0.0, end - clock()) + 0.01)  # let the last marks fire
    meters.record(result)
    sim_cores = sim.cores()
    if result.other_cpu is not None and sim_cores is not None:
        result.other_cpu = max(0.0, result.other_cpu - sim_cores)  # the sim is expected
    result.summarize(list(latencies), plan.duration)
    return result, latencies, done


_MONITORED_SENDS = 200


async def round_trips(client: Any, send: Call, count: int) -> dict[str, int]:
    """Commands clients sent to Redis (by name) while `count` sends ran one by one."""
    seen: dict[str, int] = {}
    ready = asyncio.Event()

    async def watch() -> None:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                command = await monitor.next_command()
                if command.get("client_type") == "lua":
                    continue  # run inside a script: not a round trip
                name = str(command.get("command", "")).split(" ", 1)[0].lower()
                seen[name] = seen.get(name, 0) + 1

    watcher = asyncio.create_task(watch())
    await ready.wait()
    await asyncio.sleep(0.2)
    for _ in range(count):
        await send()
    await asyncio.sleep(0.5)  # let the monitor stream catch up
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    return seen


async def _run_load(job: SendsJob, spec: dict[str, Any]) -> SendsResult:
    import grpc
    import redis.asyncio as redis

    from acme.wxplatform.v1 import messaging_service_pb2 as pb
    from acme.wxplatform.v1 import messaging_service_pb2_grpc

    metadata = (("authorization", f"Bearer {spec['credential']}"),)
    run = secrets.token_hex(4)
    keys = itertools.count()

    def request(key: str) -> Any:
        message = pb.SendTemplateRequest(
            app_id=spec["app_id"], idempotency_key=key, to_user=FOLLOWER,
            template_id=TEMPLATE_ID, url="https://shop.example.com/o/1",
        )  # fmt: skip
        message.data["keyword1"].value = "bench"
        return message

    core_channel = grpc.aio.insecure_channel(f"127.0.0.1:{job.core_port}")
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{job.echo_port}")
    client = redis.from_url(job.redis_url)
    send_template = messaging_service_pb2_grpc.MessagingServiceStub(core_channel).SendTemplate
    echo_rpc = echo_channel.unary_unary(ECHO_METHOD)
    payload = request("echo-payload-of-the-same-size").SerializeToString()

    async def send() -> object:
        return await send_template(
            request(f"bench-{run}-{next(keys)}"), metadata=metadata, timeout=10
        )

    async def echo() -> object:
        return await echo_rpc(payload, timeout=10)

    rounds: dict[str, list[PhaseResult]] = {"echo": [], "sends": []}
    latencies: dict[str, list[float]] = {"echo": [], "sends": []}
    total = SendsResult(PhaseResult("closed", 0, 0, 0), PhaseResult("closed", 0, 0, 0))
    try:
        await send()  # the first send fetches the access token: not part of any round
        for _ in range(job.plan.rounds):
            result, lat, _done = await closed_window(echo, job.plan, job.echo_pid, job.sim_pid)
            rounds["echo"].append(result)
            latencies["echo"] += lat
            result, lat, _done = await closed_window(send, job.plan, job.core_pid, job.sim_pid)
            rounds["sends"].append(result)
            latencies["sends"] += lat
        trips = await round_trips(client, send, _MONITORED_SENDS)
        total.redis_sends = _MONITORED_SENDS
        total.redis_commands = sum(trips.values())
        total.commandstats = dict(trips)
    finally:
        await core_channel.close()
        await echo_channel.close()
        await client.aclose()
    total.echo = merge_rounds(rounds["echo"], latencies["echo"])
    total.sends = merge_rounds(rounds["sends"], latencies["sends"])
    return total


def _load_main() -> int:
    data = json.loads(sys.stdin.read())
    job = SendsJob(**{**data, "plan": SendsPlan(**data["plan"])})
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})
    spec = json.loads(Path(job.spec_path).read_text(encoding="utf-8"))
    result = asyncio.run(_run_load(job, spec))
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    return 0


# -- the driver's side ----------------------------------------------------------------


def run_load(module: str, job: Any, timeout: float) -> dict[str, Any]:
    """Run `python -m <module> load` with `job` (a dataclass) on stdin; its JSON answer."""
    name = module.rpartition(".")[2]
    try:
        completed = subprocess.run(
            [sys.executable, "-m", module, "load"],
            cwd=ROOT,
            input=json.dumps(asdict(job)).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchProcessError(f"{name} load still running after {timeout:.0f} s") from None
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise BenchProcessError(f"{name} load failed:\n" + "\n".join(stderr))
    answer: dict[str, Any] = json.loads(completed.stdout)
    return answer


def _spawn_load(job: SendsJob) -> SendsResult:
    timeout = job.plan.rounds * 2 * (job.plan.warmup + job.plan.duration + 5) + 60
    return SendsResult.from_json(run_load("bench.sends", job, timeout))


@dataclass(frozen=True)
class Servers:
    """The processes both gRPC scenarios start: the simulator, core and the echo."""

    sim: ServerProcess
    core: ServerProcess
    echo: ServerProcess
    server_cpu: int | None
    load_cpu: int | None


def start_servers(
    stack: contextlib.ExitStack,
    spec: dict[str, Any],
    spec_path: Path,
    workdir: Path,
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[Servers, dict[str, ServerProcess]]:
    """Start the simulator (its URL then goes into the spec), core and the echo, and the
    `extra` (kind, module) servers beside them on the server CPU; `stack` stops them."""
    server_cpu, load_cpu = cpu_plan()
    allowed = sorted(os.sched_getaffinity(0))
    # The simulator stands in for WeChat: anywhere but the server CPU.
    sim_cpu = allowed[2] if len(allowed) > 2 else load_cpu
    sim = ServerProcess("sim", spec_path, workdir / "sim", cpu=sim_cpu, module="bench.sends")
    stack.callback(sim.stop)
    sim.start()
    spec["config"]["wechat"] = {"api_base": sim.ready["url"]}
    write_spec(spec_path, spec)
    kinds = [("core", "bench.sends"), ("echo", "bench.sends"), *extra]
    servers = {
        kind: ServerProcess(kind, spec_path, workdir / kind, cpu=server_cpu, module=module)
        for kind, module in kinds
    }
    for server in servers.values():
        stack.callback(server.stop)
        server.spawn()
    for server in servers.values():
        server.wait_ready()
    started = Servers(sim, servers["core"], servers["echo"], server_cpu, load_cpu)
    return started, servers


def run_sends(tmp: Path, plan: SendsPlan, log_level: str = "INFO") -> SendsResult:
    """Start sim, core and echo, measure them with a load process, stop them."""
    spec = new_sends_spec(log_level)
    spec_path = tmp / "sends-spec.json"
    write_spec(spec_path, spec)
    with contextlib.ExitStack() as stack:
        up, _ = start_servers(stack, spec, spec_path, tmp / "sends")
        core, echo = up.core, up.echo
        job = SendsJob(
            str(spec_path), core.port, core.pid, echo.port, echo.pid, up.sim.pid,
            str(core.ready["redis"]), plan, up.load_cpu,
        )  # fmt: skip
        return _spawn_load(job)


def judge_sends(result: SendsResult | None, failure: str | None = None) -> list[Row]:
    """Table rows: echo (the reference), sends (×echo, ×/core) and Redis per send."""
    mode, shape = "grpc", "closed"
    if result is None:
        return [
            Row(name, mode, shape, failure=failure or "did not run", verdict="FAIL")
            for name in ("echo", "sends")
        ]
    echo = Row("echo", mode, shape, result=result.echo, target="reference", verdict="ref")
    sends = Row("sends", mode, shape, result=result.sends, target=f"×/core ≥ {SENDS_RATIO:g}")
    for row in (echo, sends):
        r = row.result
        assert r is not None
        if r.errors:
            row.notes.append(
                "errors: " + ", ".join(f"{k}×{v}" for k, v in sorted(r.errors.items()))
            )
        if r.other_cpu is not None and r.other_cpu > 0.15:
            row.notes.append(f"machine not idle: other processes used {r.other_cpu:.2f} cores")
    e, s = result.echo, result.sends
    if e.rate > 0:
        sends.ratio = s.rate / e.rate
        echo.ratio = echo.core_ratio = 1.0
        if s.http_cpu and e.http_cpu:
            sends.core_ratio = (s.rate / s.http_cpu) / (e.rate / e.http_cpu)
        pairs = [a / b for a, b in zip(s.round_rates, e.round_rates, strict=False) if b > 0]
        if len(pairs) > 1:
            sends.notes.append(f"×echo per round {min(pairs):.2f}–{max(pairs):.2f}")
    ok = not s.errors and sends.core_ratio is not None and sends.core_ratio >= SENDS_RATIO
    sends.verdict = "PASS" if ok else "MISS"
    if max(s.load_cpu or 0.0, e.load_cpu or 0.0) > 0.9:
        sends.notes.append(
            f"load process near one core (echo {e.load_cpu or 0:.2f}, sends {s.load_cpu or 0:.2f}):"
            " a server may not have been the limit"
        )
    redis = Row("redis", mode, "per send", target=f"≤ {REDIS_MAX_PER_SEND:g} cmds/send")
    per_send = result.per_send
    if per_send is None:
        redis.verdict = "FAIL"
        redis.failure = "no SendTemplate completed"
    else:
        redis.verdict = "PASS" if per_send <= REDIS_MAX_PER_SEND else "MISS"
        redis.notes.append(
            f"{per_send:.2f} round trips per send ({result.redis_commands} commands sent"
            f" over {result.redis_sends} sends, by MONITOR; a script call counts as one)"
        )
        top = sorted(result.commandstats.items(), key=lambda kv: -kv[1])[:6]
        redis.notes.append(
            "by command: "
            + ", ".join(f"{name} {calls / result.redis_sends:.2f}" for name, calls in top)
        )
    return [echo, sends, redis]


def sends_json(result: SendsResult | None) -> dict[str, Any] | None:
    """The Redis figures for the JSON report (the rows carry the rest)."""
    if result is None:
        return None
    per_send = result.per_send
    return {
        "targets": {"ratio_min_per_core": SENDS_RATIO, "redis_per_send_max": REDIS_MAX_PER_SEND},
        "redis_commands": result.redis_commands,
        "redis_sends": result.redis_sends,
        "redis_round_trips_per_send": None if per_send is None else round(per_send, 3),
        "redis_commandstats": result.commandstats,
        "note": "commands clients sent (MONITOR); a script call (EVALSHA) is one round trip",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`load` (job on stdin) or one server KIND."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        return _load_main()
    parser = argparse.ArgumentParser(prog="python -m bench.sends")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # before redis-server and gRPC threads start
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    asyncio.run(_serve(args.kind, spec, args.workdir, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The load generator: raw keep-alive HTTP/1.1 over asyncio streams, pre-built requests.

Two shapes:

* `closed_loop`: N connections, each sending its next push as soon as the previous
  answer arrived, for a warm-up and then a measured window: the maximum throughput.
* `open_loop`: pushes at a fixed rate whatever the server does, each on an idle
  connection (more are opened as needed, up to a cap). Latency runs from the moment the
  push was due, not from when it was finally sent, so a server that falls behind shows
  its queueing instead of hiding it (no coordinated omission).

Run as `python -m bench.load` it reads a job (JSON) on stdin, pins itself to a CPU,
builds the pushes, runs the phases and writes their results (JSON) on stdout: the
driver always runs it in a process of its own, apart from the server under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.pushes import Push, PushFactory
from bench.spec import REPLY, BenchSpec, Mode
from bench.stats import PhaseResult
from wxplatform.config import AppConfig
from wxplatform.sim.replies import check_reply

__all__ = [
    "HttpConnection",
    "LoadJob",
    "PhaseSpec",
    "closed_loop",
    "main",
    "open_loop",
    "run_job",
    "verify_samples",
]

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_MAX_SAMPLES = 400  # replies kept per phase for checking after the clock stops
_DRAIN_SECONDS = 5.0  # how long the open loop waits for late answers at the end
_SLACK_SECONDS = 30.0  # bound on a closed loop beyond its planned duration


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client understands."""


class HttpConnection:
    """One keep-alive connection: write a request, read exactly one response."""

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        """Connect (asyncio sets TCP_NODELAY on TCP transports)."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def exchange(self, wire: bytes) -> tuple[int, bytes]:
        """Send one request; return the response's status and body."""
        self._writer.write(wire)
        head = await self._reader.readuntil(_HEAD_END)
        if not head.startswith(b"HTTP/1.1 "):
            raise ProtocolError("not an HTTP/1.1 response")
        status = int(head[9:12])
        # Tornado always sends Content-Length for a finished, uncompressed body.
        start = head.lower().find(_CONTENT_LENGTH)
        if start < 0:
            raise ProtocolError("response without Content-Length")
        end = head.index(b"\r\n", start + 2)
        length = int(head[start + len(_CONTENT_LENGTH) : end])
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        """Close without waiting."""
        self._writer.close()

    async def aclose(self) -> None:
        """Close and wait until the transport is gone."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


_EXCHANGE_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ProtocolError, ValueError)  # fmt: skip


@dataclass
class _Recorder:
    """Collects outcomes during a phase; cheap, because it runs inside the timed loop."""

    expected: bytes  # found in every good reply body (the reply text, or `<Encrypt>`)
    stride: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[int, int, bytes]] = field(default_factory=list)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def answer(self, index: int, status: int, body: bytes, latency: float) -> None:
        if status != 200:
            self.error(f"http_{status}")
        elif self.expected not in body:
            self.error("unexpected_body")
        else:
            self.latencies.append(latency)
        if index % self.stride == 0 and len(self.samples) < _MAX_SAMPLES:
            self.samples.append((index, status, body))


def _recorder(app: AppConfig, count: int) -> _Recorder:
    expected = b"<Encrypt>" if app.encryption != "plaintext" else REPLY.encode()
    return _Recorder(expected, max(1, count // (_MAX_SAMPLES // 2)))


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


class _Meters:
    """CPU of the server under test and of this load process over the measured window."""

    def __init__(self, server_pid: int | None) -> None:
        self.server = CpuMeter([server_pid] if server_pid is not None else [])
        self.load = CpuMeter([os.getpid()])

    def window(self, starts_in: float, lasts: float) -> None:
        """Take the marks `starts_in` seconds from now and `lasts` seconds later."""
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, starts_in), self._mark_start)
        loop.call_later(max(0.0, starts_in + lasts), self._mark_stop)

    def _mark_start(self) -> None:
        self.server.start()
        self.load.start()

    def _mark_stop(self) -> None:
        self.server.stop()
        self.load.stop()

    def record(self, result: PhaseResult) -> None:
        result.server_cpu = self.server.cores()
        result.load_cpu = self.load.cores()


async def closed_loop(
    host: str,
    port: int,
    app: AppConfig,
    pushes: Sequence[Push],
    *,
    connections: int,
    warmup: float,
    duration: float,
    server_pid: int | None = None,
) -> PhaseResult:
    """Max throughput: `connections` keep-alive clients back to back, then the window."""
    result = PhaseResult("closed", connections, 0.0, duration, built=len(pushes))
    recorder = _recorder(app, len(pushes))
    meters = _Meters(server_pid)
    cursor = iter(range(len(pushes)))
    clock = time.perf_counter
    started = clock()
    window_start = started + warmup
    window_end = window_start + duration
    meters.window(warmup, duration)

    async def client() -> None:
        conn: HttpConnection | None = None
        try:
            for index in cursor:
                sent = clock()
                if sent >= window_end:
                    return
                if conn is None:
                    conn = await HttpConnection.open(host, port)
                try:
                    status, body = await conn.exchange(pushes[index].wire)
                except _EXCHANGE_ERRORS as exc:
                    recorder.error(_error_name(exc))
                    conn.close()
                    conn = None
                    continue
                done = clock()
                if sent >= window_start and done <= window_end:
                    recorder.answer(index, status, body, done - sent)
            result.exhausted = clock() < window_end
        finally:
            if conn is not None:
                await conn.aclose()

    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    _done, pending = await asyncio.wait(tasks, timeout=warmup + duration + _SLACK_SECONDS)
    for task in pending:
        task.cancel()
        recorder.error("stuck")
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            recorder.error(_error_name(task.exception() or Exception()))
    result.errors = recorder.errors
    result.summarize(recorder.latencies, duration)
    meters.record(result)
    verify_samples(app, pushes, recorder.samples, result)
    return result


class _Pool:
    """Idle connections for the open loop; opens more on demand, up to `limit`."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port, self._limit = host, port, limit
        self._idle: list[HttpConnection] = []
        self._waiters: deque[asyncio.Future[HttpConnection | None]] = deque()
        self.opened = 0
        self.peak = 0

    async def acquire(self) -> HttpConnection:
        if self._idle:
            return self._idle.pop()
        if self.opened < self._limit:
            self.opened += 1
            self.peak = max(self.peak, self.opened)
            try:
                return await HttpConnection.open(self._host, self._port)
            except BaseException:
                self.opened -= 1
                raise
        waiter: asyncio.Future[HttpConnection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        conn = await waiter
        return conn if conn is not None else await self.acquire()

    def release(self, conn: HttpConnection | None) -> None:
        """Hand back a connection, or None when it broke (a waiter may open a new one)."""
        if conn is None:
            self.opened -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.aclose() for c in idle))


async def open_loop(
    host: str,
    port: int,
    app: AppConfig,
    pushes: Sequence[Push],
    *,
    rate: float,
    warmup: float,
    duration: float,
    max_connections: int = 256,
    server_pid: int | None = None,
) -> PhaseResult:
    """A fixed arrival rate for a warm-up and a window; latency from each push's due time."""
    total = min(len(pushes), int(rate * (warmup + duration)))
    first_measured = int(rate * warmup)
    result = PhaseResult("open", max_connections, rate, duration, built=len(pushes))
    result.exhausted = total < int(rate * (warmup + duration))
    recorder = _recorder(app, total)
    pool = _Pool(host, port, max_connections)
    meters = _Meters(server_pid)
    clock = time.perf_counter
    last_done = 0.0

    async def one(index: int, due: float, dispatched: float) -> None:
        nonlocal last_done
        # Due in the past: count from when it was due. Sent a little early (the loop
        # wakes at millisecond granularity): count from when it really went out.
        start = min(due, dispatched)
        try:
            conn = await pool.acquire()
        except OSError as exc:
            recorder.error(_error_name(exc))
            return
        try:
            status, body = await conn.exchange(pushes[index].wire)
        except _EXCHANGE_ERRORS as exc:
            recorder.error(_error_name(exc))
            conn.close()
            pool.release(None)
            return
        done = clock()
        pool.release(conn)
        if index >= first_measured:
            recorder.answer(index, status, body, done - start)
            last_done = max(last_done, done)

    interval = 1.0 / rate
    t0 = clock() + 0.01
    window_start = t0 + first_measured * interval
    meters.window(window_start - clock(), duration)
    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while index < total:
        now = clock()
        while index < total and t0 + index * interval <= now + 0.001:
            tasks.add(asyncio.create_task(one(index, t0 + index * interval, now)))
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, t0 + index * interval - clock() - 0.001))
    _done, pending = await asyncio.wait(tasks, timeout=_DRAIN_SECONDS) if tasks else (set(), set())
    for task in pending:
        task.cancel()
        recorder.error("no_answer_in_time")
    await asyncio.gather(*tasks, return_exceptions=True)
    await pool.aclose()
    result.connections = pool.peak
    result.errors = recorder.errors
    result.summarize(recorder.latencies, max(duration, last_done - window_start))
    meters.record(result)
    verify_samples(app, pushes, recorder.samples, result)
    return result


def verify_samples(
    app: AppConfig,
    pushes: Sequence[Push],
    samples: Sequence[tuple[int, int, bytes]],
    result: PhaseResult,
) -> None:
    """Check sampled replies as WeChat would, plus the reply text; after the clock stops."""
    for index, status, body in samples:
        push = pushes[index]
        sent = {"FromUserName": push.openid, "ToUserName": push.to_user}
        verdict = check_reply(app, status, body, sent)
        problem = verdict.error
        if problem is None and (verdict.reply or {}).get("Content") != REPLY:
            problem = "reply text is not the configured reply"
        if problem is None:
            result.verified += 1
        else:
            result.invalid += 1
            result.invalid_reason = result.invalid_reason or problem


@dataclass(frozen=True)
class PhaseSpec:
    """One load shape to run: `closed` (connections) or `open` (rate)."""

    shape: str
    warmup: float
    duration: float
    connections: int = 16
    rate: float = 1000.0
    max_rate: float = 5000.0  # closed loop: pushes are pre-built for at most this rate

    def push_count(self) -> int:
        """How many pushes to pre-build for this phase."""
        per_second = self.rate if self.shape == "open" else self.max_rate
        return int(per_second * (self.warmup + self.duration)) + 1


@dataclass(frozen=True)
class LoadJob:
    """Everything a load process needs: where to send, for which app, which phases."""

    spec_path: str
    mode: Mode
    host: str
    port: int
    phases: tuple[PhaseSpec, ...]
    cpu: int | None = None  # pin the load process to this CPU
    server_pid: int | None = None  # to report the server's CPU use

    def to_json(self) -> str:
        """Serialized for the load process's stdin."""
        data: dict[str, Any] = {
            "spec_path": self.spec_path,
            "mode": self.mode,
            "host": self.host,
            "port": self.port,
            "phases": [vars(p) for p in self.phases],
            "cpu": self.cpu,
            "server_pid": self.server_pid,
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadJob:
        """The inverse of `to_json`."""
        data = json.loads(text)
        phases = tuple(PhaseSpec(**p) for p in data.pop("phases"))
        return cls(phases=phases, **data)


async def run_job(job: LoadJob) -> list[PhaseResult]:
    """Build each phase's pushes (untimed), then run it."""
    app = BenchSpec.load(Path(job.spec_path)).app(job.mode)
    factory = PushFactory(app, job.host, job.port)
    results = []
    for phase in job.phases:
        pushes = factory.build(phase.push_count())
        if phase.shape == "closed":
            result = await closed_loop(
                job.host, job.port, app, pushes,
                connections=phase.connections, warmup=phase.warmup, duration=phase.duration,
                server_pid=job.server_pid,
            )  # fmt: skip
        else:
            result = await open_loop(
                job.host, job.port, app, pushes,
                rate=phase.rate, warmup=phase.warmup, duration=phase.duration,
                server_pid=job.server_pid,
            )  # fmt: skip
        results.append(result)
    return results


def main() -> int:
    """Read a job on stdin, write the results on stdout."""
    job = LoadJob.from_json(sys.stdin.read())
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})
    results = asyncio.run(run_job(job))
    sys.stdout.write(json.dumps([r.to_json() for r in results]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

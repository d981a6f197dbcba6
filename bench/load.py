"""The load generator's two shapes, over pre-built pushes and raw keep-alive HTTP/1.1.

* `closed_loop`: N connections, each sending its next push as soon as the previous
  answer arrived, for a warm-up and then a measured window: the maximum throughput.
* `open_loop`: pushes at a fixed rate whatever the server does, each on an idle
  connection (more are opened as needed, up to a cap). Latency runs from the moment the
  push was due, not from when it was finally sent, so a server that falls behind shows
  its queueing instead of hiding it (no coordinated omission).

Inside the timed loops only bytes are written and statuses counted; sampled replies
are checked the way WeChat would once the clock has stopped. `bench/job.py` is the
load process that runs these against the servers under test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.client import EXCHANGE_ERRORS, ConnectionPool, HttpConnection
from bench.cpu import CpuMeter, MachineMeter
from bench.pushes import Push
from bench.spec import REPLY
from bench.stats import PhaseResult
from wxplatform.config import AppConfig
from wxplatform.sim.replies import check_reply

__all__ = ["close_all", "closed_loop", "merge_rounds", "open_loop", "verify_samples"]

_MAX_SAMPLES = 400  # replies kept per phase for checking after the clock stops
_DRAIN_SECONDS = 5.0  # how long the open loop waits for late answers at the end
_SLACK_SECONDS = 30.0  # bound on a closed loop beyond its planned duration


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
        pids = [server_pid] if server_pid is not None else []
        self.server = CpuMeter(pids)
        self.http = CpuMeter(pids, descendants=False)
        self.load = CpuMeter([os.getpid()], descendants=False)
        self.machine = MachineMeter()

    def window(self, starts_in: float, lasts: float) -> None:
        """Take the marks `starts_in` seconds from now and `lasts` seconds later."""
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, starts_in), self._mark_start)
        loop.call_later(max(0.0, starts_in + lasts), self._mark_stop)

    def _mark_start(self) -> None:
        self.server.start()
        self.http.start()
        self.load.start()
        self.machine.start()

    def _mark_stop(self) -> None:
        self.server.stop()
        self.http.stop()
        self.load.stop()
        self.machine.stop()

    def record(self, result: PhaseResult) -> None:
        result.server_cpu = self.server.cores()
        result.http_cpu = self.http.cores()
        result.load_cpu = self.load.cores()
        result.steal = self.machine.steal_share()
        busy = self.machine.busy_cores()
        ours = (result.server_cpu or 0.0) + (result.load_cpu or 0.0)
        result.other_cpu = None if busy is None else max(0.0, busy - ours)


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
    keep_latencies: list[float] | None = None,
    keep_connections: list[HttpConnection | None] | None = None,
) -> PhaseResult:
    """Max throughput: `connections` keep-alive clients back to back, then the window.

    With `keep_latencies`, the window's latencies are added to it (to merge rounds).
    With `keep_connections` (one slot per client), connections are taken from and left
    in it, open, so that short rounds do not pay for connection set-up; the caller
    closes them.
    """
    result = PhaseResult("closed", connections, 0.0, duration, built=len(pushes))
    recorder = _recorder(app, len(pushes))
    meters = _Meters(server_pid)
    fresh: list[HttpConnection | None] = [None] * connections
    slots = keep_connections if keep_connections is not None else fresh
    cursor = iter(range(len(pushes)))
    clock = time.perf_counter
    started = clock()
    window_start = started + warmup
    window_end = window_start + duration
    meters.window(warmup, duration)

    async def client(slot: int) -> None:
        for index in cursor:
            sent = clock()
            if sent >= window_end:
                return
            conn = slots[slot]
            if conn is None:
                conn = slots[slot] = await HttpConnection.open(host, port)
            try:
                status, body = await conn.exchange(pushes[index].wire)
            except EXCHANGE_ERRORS as exc:
                recorder.error(_error_name(exc))
                conn.close()
                slots[slot] = None
                continue
            except asyncio.CancelledError:  # stuck: the connection is in an unknown state
                conn.close()
                slots[slot] = None
                raise
            done = clock()
            if sent >= window_start and done <= window_end:
                recorder.answer(index, status, body, done - sent)
        result.exhausted = clock() < window_end

    tasks = [asyncio.create_task(client(slot)) for slot in range(connections)]
    _done, pending = await asyncio.wait(tasks, timeout=warmup + duration + _SLACK_SECONDS)
    for task in pending:
        task.cancel()
        recorder.error("stuck")
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            recorder.error(_error_name(task.exception() or Exception()))
    if keep_connections is None:
        await close_all(slots)
    result.errors = recorder.errors
    if keep_latencies is not None:
        keep_latencies += recorder.latencies
    result.summarize(recorder.latencies, duration)
    meters.record(result)
    verify_samples(app, pushes, recorder.samples, result)
    return result


async def close_all(slots: list[HttpConnection | None]) -> None:
    """Close and forget every connection in `slots`."""
    open_ones = [c for c in slots if c is not None]
    slots[:] = [None] * len(slots)
    await asyncio.gather(*(c.aclose() for c in open_ones))


def merge_rounds(rounds: Sequence[PhaseResult], latencies: list[float]) -> PhaseResult:
    """One closed-loop result from several windows against one server.

    Counts add up, the rate is over all measured seconds, percentiles come from every
    latency of every window, CPU figures are averaged over the windows.
    """
    first = rounds[0]
    merged = PhaseResult("closed", first.connections, 0.0, sum(r.duration for r in rounds))
    for r in rounds:
        for reason, count in r.errors.items():
            merged.errors[reason] = merged.errors.get(reason, 0) + count
        merged.verified += r.verified
        merged.invalid += r.invalid
        merged.invalid_reason = merged.invalid_reason or r.invalid_reason
        merged.exhausted = merged.exhausted or r.exhausted
        merged.built += r.built
    merged.summarize(latencies, merged.duration)
    merged.round_rates = [r.rate for r in rounds]
    for name in ("server_cpu", "http_cpu", "load_cpu", "steal", "other_cpu"):
        values = [v for r in rounds if (v := getattr(r, name)) is not None]
        setattr(merged, name, sum(values) / len(values) if values else None)
    return merged


async def _at_fixed_rate(
    total: int,
    rate: float,
    t0: float,
    send: Callable[[int, float, float], Coroutine[Any, Any, None]],
) -> set[asyncio.Task[None]]:
    """Start `send(index, due, now)` for push `index` at `t0 + index / rate`."""
    clock = time.perf_counter
    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while index < total:
        now = clock()
        # The loop wakes at millisecond granularity: send what is due within 1 ms now.
        while index < total and t0 + index / rate <= now + 0.001:
            tasks.add(asyncio.create_task(send(index, t0 + index / rate, now)))
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, t0 + index / rate - clock() - 0.001))
    return tasks


async def _drain(tasks: set[asyncio.Task[None]], recorder: _Recorder) -> None:
    """Wait a bounded time for the last answers; what has none by then is an error."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=_DRAIN_SECONDS)
    for task in pending:
        task.cancel()
        recorder.error("no_answer_in_time")
    await asyncio.gather(*tasks, return_exceptions=True)


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
    pool = ConnectionPool(host, port, max_connections)
    meters = _Meters(server_pid)
    clock = time.perf_counter
    last_done = 0.0

    async def one(index: int, due: float, dispatched: float) -> None:
        nonlocal last_done
        # Due in the past: count from when it was due. Sent a little early: count
        # from when it really went out.
        start = min(due, dispatched)
        try:
            conn = await pool.acquire()
        except OSError as exc:
            recorder.error(_error_name(exc))
            return
        try:
            status, body = await conn.exchange(pushes[index].wire)
        except EXCHANGE_ERRORS as exc:
            recorder.error(_error_name(exc))
            conn.close()
            pool.release(None)
            return
        except asyncio.CancelledError:  # never answered before the drain ran out
            conn.close()
            raise
        done = clock()
        pool.release(conn)
        if index >= first_measured:
            recorder.answer(index, status, body, done - start)
            last_done = max(last_done, done)

    t0 = clock() + 0.01
    window_start = t0 + first_measured / rate
    meters.window(window_start - clock(), duration)
    tasks = await _at_fixed_rate(total, rate, t0, one)
    await _drain(tasks, recorder)
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

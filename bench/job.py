"""The load process: `python -m bench.job` reads a job on stdin and writes results on stdout.

The driver always starts it as a process of its own, pinned to a CPU other than the
servers'. For one mode it measures every server under test (a "target"):

1. closed loop in short interleaved rounds (round 1: baseline, edge, stack; round 2:
   …) over connections kept open throughout, so that a shared VM's swings in speed,
   which last seconds, fall on every target alike; a target's rounds are merged into
   one figure, and their spread is kept;
2. open loop: each target in turn at the fixed rate.

Pushes are built before each window, untimed, and are fresh for every window, so a
server never sees a MsgId or nonce twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.client import HttpConnection
from bench.load import close_all, closed_loop, merge_rounds, open_loop
from bench.pushes import PushFactory
from bench.spec import BenchSpec, Mode
from bench.stats import PhaseResult

__all__ = ["ClosedPlan", "LoadJob", "OpenPlan", "Target", "main", "run_job"]

_MARGIN = 1.5  # later rounds pre-build for 1.5× the best rate seen so far, plus a floor


@dataclass(frozen=True)
class Target:
    """A server under test: its name, port and process id (for its CPU use)."""

    name: str
    port: int
    pid: int | None = None


@dataclass(frozen=True)
class ClosedPlan:
    """Closed loop: connections, and per round a warm-up and a measured window."""

    connections: int
    warmup: float
    duration: float
    rounds: int
    max_rate: float = 5000.0  # first round: pushes are pre-built for at most this rate


@dataclass(frozen=True)
class OpenPlan:
    """Open loop: the fixed rate, a warm-up and a measured window."""

    rate: float
    warmup: float
    duration: float


@dataclass(frozen=True)
class LoadJob:
    """Everything the load process needs."""

    spec_path: str
    mode: Mode
    host: str
    targets: tuple[Target, ...]
    closed: ClosedPlan | None
    open: OpenPlan | None
    cpu: int | None = None  # pin the load process to this CPU

    def planned_seconds(self) -> float:
        """Measurement time this job should take, builds and drains aside."""
        closed = (
            self.closed.rounds * (self.closed.warmup + self.closed.duration) if self.closed else 0
        )
        opened = self.open.warmup + self.open.duration if self.open else 0
        return len(self.targets) * (closed + opened)

    def to_json(self) -> str:
        """Serialized for the load process's stdin."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadJob:
        """The inverse of `to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            spec_path=data["spec_path"],
            mode=data["mode"],
            host=data["host"],
            targets=tuple(Target(**t) for t in data["targets"]),
            closed=ClosedPlan(**data["closed"]) if data["closed"] else None,
            open=OpenPlan(**data["open"]) if data["open"] else None,
            cpu=data["cpu"],
        )


async def _closed_rounds(
    job: LoadJob, plan: ClosedPlan, factories: dict[str, PushFactory]
) -> dict[str, PhaseResult]:
    app = next(iter(factories.values())).app
    rounds: dict[str, list[PhaseResult]] = {t.name: [] for t in job.targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in job.targets}
    # Connections stay open from round to round, so a short round is all steady state.
    slots: dict[str, list[HttpConnection | None]] = {
        t.name: [None] * plan.connections for t in job.targets
    }
    try:
        for number in range(plan.rounds):
            for target in job.targets:
                best = max((r.rate for r in rounds[target.name]), default=None)
                rate = plan.max_rate if best is None else min(plan.max_rate, best * _MARGIN + 200)
                # The first round also opens the connections: give it a longer warm-up.
                warmup = plan.warmup * (3 if number == 0 else 1)
                pushes = factories[target.name].build(int(rate * (warmup + plan.duration)) + 1)
                result = await closed_loop(
                    job.host, target.port, app, pushes,
                    connections=plan.connections, warmup=warmup, duration=plan.duration,
                    server_pid=target.pid, keep_latencies=latencies[target.name],
                    keep_connections=slots[target.name],
                )  # fmt: skip
                rounds[target.name].append(result)
    finally:
        for conns in slots.values():
            await close_all(conns)
    return {name: merge_rounds(r, latencies[name]) for name, r in rounds.items()}


async def run_job(job: LoadJob) -> dict[str, list[PhaseResult]]:
    """Closed-loop rounds over all targets, then the open loop on each; results by target."""
    app = BenchSpec.load(Path(job.spec_path)).app(job.mode)
    factories = {t.name: PushFactory(app, job.host, t.port) for t in job.targets}
    results: dict[str, list[PhaseResult]] = {t.name: [] for t in job.targets}
    if job.closed is not None and job.targets:
        for name, merged in (await _closed_rounds(job, job.closed, factories)).items():
            results[name].append(merged)
    if job.open is not None:
        plan = job.open
        for target in job.targets:
            pushes = factories[target.name].build(int(plan.rate * (plan.warmup + plan.duration)))
            result = await open_loop(
                job.host, target.port, app, pushes,
                rate=plan.rate, warmup=plan.warmup, duration=plan.duration, server_pid=target.pid,
            )  # fmt: skip
            results[target.name].append(result)
    return results


def main() -> int:
    """Read a job on stdin, write `{target: [results]}` on stdout."""
    job = LoadJob.from_json(sys.stdin.read())
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})
    results = asyncio.run(run_job(job))
    sys.stdout.write(json.dumps({k: [r.to_json() for r in v] for k, v in results.items()}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

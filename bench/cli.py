"""`python -m bench`: run the scenarios, print the table (or JSON), save the JSON.

Scenarios, each in plaintext and safe mode, each against a fresh server process:

* `baseline`: the bare Tornado handler (`bench/baseline.py`);
* `edge`: the edge with an in-process stub core (`bench/stub.py`);
* `stack`: edge and core in one process (as `wxplatform dev` runs them) and an
  embedded redis-server, the whole path edge → gRPC → core → Redis.

Each server gets two load shapes from a separate load process: closed loop (N
keep-alive connections, max throughput) and open loop (a fixed 1,000 pushes/s). With
two or more CPUs the server side (and its redis-server) is pinned to one CPU and the
load process to another.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cpu import cpu_model
from bench.load import LoadJob, PhaseSpec
from bench.procs import ROOT, BenchProcessError, ServerProcess, cpu_plan, run_load
from bench.report import OPEN_RATE, Row, judge, render_table, to_json
from bench.spec import MODES, BenchSpec, Mode, new_spec

__all__ = ["main"]

SCENARIOS = ("baseline", "edge", "stack")
DEFAULT_OUT = Path(".wxplatform/bench/last.json")


@dataclass(frozen=True)
class Durations:
    """Warm-up and measured seconds of both load shapes."""

    closed_warmup: float
    closed: float
    open_warmup: float
    open: float


FULL = Durations(closed_warmup=1.0, closed=5.0, open_warmup=0.5, open=4.0)
QUICK = Durations(closed_warmup=0.3, closed=1.5, open_warmup=0.2, open=1.0)


def _out(text: str, *, err: bool = False) -> None:
    """All output goes through here: the report on stdout, progress on stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _selected(only: Sequence[str] | None) -> list[tuple[str, Mode]]:
    """(scenario, mode) pairs to run, baseline first within each mode."""
    wanted: set[tuple[str, Mode]] = set()
    for name in only or ["all"]:
        scenario, _, mode = name.partition("-")
        for s in SCENARIOS:
            for m in MODES:
                if scenario in ("all", s, m) and mode in ("", m):
                    wanted.add((s, m))
    # A ratio needs its baseline, so a selected scenario brings the baseline along.
    wanted |= {("baseline", m) for _, m in wanted}
    return [(s, m) for m in MODES for s in SCENARIOS if (s, m) in wanted]


def _only_name(value: str) -> str:
    scenario, _, mode = value.partition("-")
    if scenario not in (*SCENARIOS, *MODES) or mode not in ("", *MODES):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use baseline, edge, stack, plaintext, safe, or e.g. edge-safe"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short durations (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--only",
        action="append",
        type=_only_name,
        metavar="NAME",
        help="run only this scenario or mode (repeatable): baseline, edge, stack, plaintext,\n"
        "safe, or SCENARIO-MODE such as edge-safe; the baseline of that mode always runs too",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="closed loop connections (16)"
    )
    parser.add_argument("--rate", type=float, default=OPEN_RATE, help="open loop pushes/s (1000)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level of edge and core (INFO, their default; logs go to a temp file)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    return parser


def _phases(args: argparse.Namespace, durations: Durations) -> tuple[PhaseSpec, ...]:
    return (
        PhaseSpec("closed", durations.closed_warmup, durations.closed, args.connections),
        PhaseSpec("open", durations.open_warmup, durations.open, rate=args.rate),
    )


def _run_one(
    scenario: str,
    mode: Mode,
    spec_path: Path,
    workdir: Path,
    phases: tuple[PhaseSpec, ...],
) -> list[Row]:
    """Start the server, run the load process against it, stop the server."""
    server_cpu, load_cpu = cpu_plan()
    planned = sum(p.warmup + p.duration for p in phases)
    try:
        with ServerProcess(scenario, spec_path, workdir, cpu=server_cpu) as server:
            job = LoadJob(
                str(spec_path), mode, "127.0.0.1", server.port, phases, load_cpu, server.pid
            )
            results = run_load(job, timeout=planned + 120)
    except BenchProcessError as exc:
        return [Row(scenario, mode, p.shape, failure=str(exc)) for p in phases]
    return [Row(scenario, mode, r.shape, result=r) for r in results]


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("+dirty" if dirty else "")


def _context(args: argparse.Namespace, durations: Durations, pinned: bool) -> dict[str, Any]:
    versions = {}
    for package in ("tornado", "grpcio", "redis", "cryptography", "defusedxml", "protobuf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    now = datetime.datetime.now(datetime.UTC)
    return {
        "date": now.isoformat(timespec="seconds"),
        "git": _git_revision(),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": versions,
        },
        "run": {
            "quick": args.quick,
            "connections": args.connections,
            "open_rate": args.rate,
            "log_level": args.log_level,
            "durations_s": vars(durations),
            "pinned": pinned,
            "layout": "server process (+ its redis-server) on one CPU, load process on another"
            if pinned
            else "not pinned (fewer than 2 CPUs)",
            "stack": "edge and core in one process and event loop, redis-server a child",
        },
    }


def _progress(rows: Sequence[Row]) -> str:
    parts = []
    for row in rows:
        if row.result is None:
            return f"failed: {row.failure}"
        r = row.result
        parts.append(f"{row.shape} {r.rate:.0f} req/s p99 {r.p99_ms:.1f} ms")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 when every scenario produced figures (targets missed or not)."""
    args = _parser().parse_args(argv)
    durations = QUICK if args.quick else FULL
    phases = _phases(args, durations)
    plan = _selected(args.only)
    server_cpu, _ = cpu_plan()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wxp-bench-") as tmp:
        spec: BenchSpec = new_spec(args.log_level)
        spec_path = Path(tmp) / "spec.json"
        spec.dump(spec_path)
        for number, (scenario, mode) in enumerate(plan, 1):
            _out(f"[{number}/{len(plan)}] {scenario} {mode} …", err=True)
            workdir = Path(tmp) / f"{scenario}-{mode}"
            done = _run_one(scenario, mode, spec_path, workdir, phases)
            _out(f"    {_progress(done)}", err=True)
            rows += done
    judge(rows)
    report = to_json(rows, _context(args, durations, pinned=server_cpu is not None))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.json:
        _out(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        run = report["run"]
        _out(
            f"wxplatform bench {report['date']} git {report['git']}"
            f" | {report['machine']['nproc']} CPUs ({report['machine']['cpu_model']})"
            f" | {run['layout']}"
        )
        _out(render_table(rows))
        _out(f"saved {args.out}")
    return 1 if any(row.failure for row in rows) else 0

"""`python -m bench`: run the scenarios, print the table (or JSON), save the JSON.

Scenarios, each in plaintext and safe mode, each a fresh server process per run:

* `baseline`: the bare Tornado handler (`bench/baseline.py`);
* `edge`: the edge with an in-process stub core (`bench/stub.py`);
* `stack`: the whole path: the edge → gRPC → core in a second process (edge and core
  are deployed apart) → an embedded redis-server.

Plus `sends` (outbound, no mode; `bench/sends.py`): SendTemplate on core (against the
WeChat simulator in a process of its own) vs a bare grpc.aio echo RPC, and Redis
commands per send; and `identity` (`bench/identity.py`): GetSession vs the echo,
Code2Session vs its floor (one pooled HTTP call to the same simulator), and Redis round
trips of GetSession and RefreshSession.

For each mode the servers run side by side (idle but for the one being measured) and
one load process, a separate process, measures them: closed loop (N keep-alive
connections, max throughput) in interleaved rounds, then open loop (a fixed 1,000
pushes/s) on each. With two or more CPUs every server process (and redis-server) is
pinned to one CPU and the load process to another.
"""

from __future__ import annotations

import argparse
import contextlib
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
from bench.identity import identity_json, judge_identity, run_identity
from bench.job import ClosedPlan, LoadJob, OpenPlan, Target
from bench.procs import ROOT, BenchProcessError, ServerProcess, cpu_plan, run_load
from bench.report import OPEN_RATE, Row, judge, render_table, to_json
from bench.sends import FULL_PLAN, QUICK_PLAN, judge_sends, run_sends, sends_json
from bench.spec import MODES, BenchSpec, Mode, new_spec
from bench.stats import PhaseResult

__all__ = ["main"]

SCENARIOS = ("baseline", "edge", "stack", "edge2", "stack2")
# Run on the whole box, open loop only: the p99 target is "on a 2-core box", and one
# Python process uses one CPU, so the edge runs as two workers there.
BOX_SCENARIOS = ("edge2", "stack2")
SHAPES = ("closed", "open")
DEFAULT_OUT = Path(".wxplatform/bench/last.json")


@dataclass(frozen=True)
class Durations:
    """Closed loop: rounds of a warm-up and a window per server; open loop: one of each."""

    closed_rounds: int
    closed_warmup: float
    closed: float
    open_warmup: float
    open: float


FULL = Durations(closed_rounds=10, closed_warmup=0.15, closed=0.6, open_warmup=0.5, open=4.0)
QUICK = Durations(closed_rounds=2, closed_warmup=0.1, closed=0.6, open_warmup=0.2, open=1.0)


def _out(text: str, *, err: bool = False) -> None:
    """All output goes through here: the report on stdout, progress on stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _selected(only: Sequence[str] | None) -> dict[Mode, list[str]]:
    """Scenarios to run per mode, baseline first."""
    wanted: set[tuple[str, Mode]] = set()
    for name in only or ["all"]:
        scenario, _, mode = name.partition("-")
        for s in SCENARIOS:
            for m in MODES:
                if scenario in ("all", s, m) and mode in ("", m):
                    wanted.add((s, m))
    # A ratio needs its baseline, so a selected scenario brings the baseline along.
    wanted |= {("baseline", m) for _, m in wanted}
    plan = {m: [s for s in SCENARIOS if (s, m) in wanted] for m in MODES}
    return {m: scenarios for m, scenarios in plan.items() if scenarios}


_GRPC_SCENARIOS = ("sends", "identity")


def _only_name(value: str) -> str:
    if value in _GRPC_SCENARIOS:
        return value
    scenario, _, mode = value.partition("-")
    if scenario not in (*SCENARIOS, *MODES) or mode not in ("", *MODES):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use baseline, edge, stack, edge2, stack2, sends, identity, plaintext,"
            " safe, or e.g. edge-safe"
        )
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(value: str) -> int | float:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} is not positive")
        return number

    return parse


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
        help="run only this scenario or mode (repeatable): baseline, edge, stack, sends,\n"
        "identity, plaintext, safe, or SCENARIO-MODE such as edge-safe; the baseline of\n"
        "that mode always runs too (sends and identity bring their own references)",
    )
    parser.add_argument(
        "--connections", type=_positive(int), default=16, help="closed loop connections (16)"
    )
    parser.add_argument(
        "--rate", type=_positive(float), default=OPEN_RATE, help="open loop pushes/s (1000)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level of edge and core (INFO, their default; logs go to a temp file)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    return parser


def _run_mode(
    mode: Mode,
    scenarios: Sequence[str],
    *,
    spec_path: Path,
    tmp: Path,
    args: argparse.Namespace,
    durations: Durations,
    box: bool = False,
) -> list[Row]:
    """Start this mode's servers side by side, measure them with one load process.

    `box`: the servers and the load share every CPU (no pinning), open loop only.
    """
    server_cpu, load_cpu = (None, None) if box else cpu_plan()
    failures: dict[str, str] = {}
    results: dict[str, list[PhaseResult]] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            s: ServerProcess(s, spec_path, tmp / f"{s}-{mode}", cpu=server_cpu) for s in scenarios
        }
        for server in servers.values():
            stack.callback(server.stop)
            server.spawn()
        for name, server in servers.items():
            try:
                server.wait_ready()
            except BenchProcessError as exc:
                failures[name] = str(exc)
        job = LoadJob(
            str(spec_path),
            mode,
            "127.0.0.1",
            tuple(Target(n, s.port, s.pid) for n, s in servers.items() if n not in failures),
            None if box else ClosedPlan(args.connections, durations.closed_warmup,
                                        durations.closed, durations.closed_rounds),
            OpenPlan(args.rate, durations.open_warmup, durations.open),
            load_cpu,
        )  # fmt: skip
        try:
            results = run_load(job, timeout=job.planned_seconds() + 120)
        except BenchProcessError as exc:
            failures |= {t.name: str(exc) for t in job.targets}
    rows: list[Row] = []
    for name in scenarios:
        if name in failures:
            shapes = ("open",) if box else SHAPES
            rows += [Row(name, mode, shape, failure=failures[name]) for shape in shapes]
        else:
            rows += [Row(name, mode, r.shape, result=r) for r in results.get(name, [])]
    return rows


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
    versions: dict[str, str | None] = {}
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
            "layout": "servers (edge, core, redis-server) on one CPU, load process on another"
            if pinned
            else "not pinned (fewer than 2 CPUs)",
            "stack": "edge process -> gRPC -> core process -> embedded redis-server",
        },
    }


def _progress(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        if row.result is None:
            lines.append(f"{row.scenario} {row.shape}: failed: {row.failure}")
        else:
            r = row.result
            lines.append(f"{row.scenario} {row.shape}: {r.rate:.0f} req/s, p99 {r.p99_ms:.1f} ms")
    return lines


def _grpc_scenarios(
    tmp: Path, args: argparse.Namespace, with_sends: bool, with_identity: bool
) -> tuple[list[Row], dict[str, Any]]:
    """The gRPC scenarios (each brings its own reference): rows and JSON sections."""
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    scenarios: list[tuple[str, str, Any, Any, Any, int]] = [
        ("sends", "echo, SendTemplate, Redis per send", run_sends, judge_sends, sends_json, 2),
        (
            "identity",
            "echo, session floor, GetSession, login floor, Code2Session, Redis",
            run_identity,
            judge_identity,
            identity_json,
            5,
        ),
    ]
    wanted = {"sends": with_sends, "identity": with_identity}
    rows: list[Row] = []
    reports: dict[str, Any] = {name: None for name, *_ in scenarios}
    for name, what, run, judge_rows, to_json_, shown in scenarios:
        if not wanted[name]:
            continue
        _out(f"[{name}] grpc: {what} …", err=True)
        try:
            result: Any = run(tmp, plan, args.log_level)
        except BenchProcessError as exc:
            done = judge_rows(None, str(exc))
        else:
            done = judge_rows(result)
            reports[name] = to_json_(result)
        for line in _progress(done[:shown]):
            _out(f"    {line}", err=True)
        rows += done
    return rows, reports


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 when every scenario produced figures (targets missed or not)."""
    args = _parser().parse_args(argv)
    durations = QUICK if args.quick else FULL
    http_only = [name for name in args.only or [] if name not in _GRPC_SCENARIOS]
    plan = _selected(http_only) if http_only or not args.only else {}
    with_sends = not args.only or "sends" in args.only
    with_identity = not args.only or "identity" in args.only
    server_cpu, _ = cpu_plan()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wxp-bench-") as tmp:
        spec: BenchSpec = new_spec(args.log_level)
        spec_path = Path(tmp) / "spec.json"
        spec.dump(spec_path)
        phases = [
            (mode, group, box)
            for box in (False, True)
            for mode, scenarios in plan.items()
            if (group := [s for s in scenarios if (s in BOX_SCENARIOS) == box])
        ]
        for number, (mode, scenarios, box) in enumerate(phases, 1):
            where = "whole box" if box else "one CPU each"
            _out(f"[{number}/{len(phases)}] {mode} ({where}): {', '.join(scenarios)} …", err=True)
            done = _run_mode(
                mode,
                scenarios,
                spec_path=spec_path,
                tmp=Path(tmp) / ("box" if box else "pinned"),
                args=args,
                durations=durations,
                box=box,
            )
            for line in _progress(done):
                _out(f"    {line}", err=True)
            rows += done
        grpc_rows, grpc_reports = _grpc_scenarios(Path(tmp), args, with_sends, with_identity)
    judge(rows)
    rows += grpc_rows
    report = to_json(rows, _context(args, durations, pinned=server_cpu is not None))
    report.update(grpc_reports)
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

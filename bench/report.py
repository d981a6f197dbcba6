"""Targets, verdicts and the two renderings of a run: a compact table and JSON.

The targets come from the issue that asked for this suite:

* edge alone (stub core): closed-loop throughput ≥ 0.8× the bare handler's;
* whole path edge → core → Redis: ≥ 0.5× the bare handler's per edge core, i.e. req/s
  per CPU second spent in the edge process (core and Redis are deployed and scaled on
  their own), against req/s per CPU second of the bare handler;
* p99 < 10 ms at 1,000 pushes/s (open loop), with the rate actually achieved.

A row with failed exchanges or a reply that does not check out never passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import PhaseResult

__all__ = [
    "EDGE_RATIO",
    "OPEN_P99_MS",
    "OPEN_RATE",
    "STACK_RATIO",
    "Row",
    "judge",
    "render_table",
    "to_json",
]

EDGE_RATIO = 0.8
STACK_RATIO = 0.5
OPEN_RATE = 1000.0
OPEN_P99_MS = 10.0
_RATE_SHORTFALL = 0.95  # an open loop must reach 95 % of the offered rate to count
_FOREIGN_CPU = 0.15  # cores busy with other work above which a figure is suspect


@dataclass
class Row:
    """One line of the report: a scenario × mode × load shape, and how it fared."""

    scenario: str  # baseline | edge | stack
    mode: str  # plaintext | safe
    shape: str  # closed | open
    result: PhaseResult | None = None
    failure: str | None = None  # why the scenario produced no figures
    ratio: float | None = None  # closed loop: req/s over the baseline's, same mode
    core_ratio: float | None = None  # the same, each per CPU of the process answering HTTP
    target: str = ""
    verdict: str = ""  # PASS, MISS, ref (the baseline itself) or FAIL (did not run)
    notes: list[str] = field(default_factory=list)

    def load_label(self) -> str:
        """`closed×16` or `open 1000/s`."""
        if self.result is None:
            return self.shape
        if self.shape == "closed":
            return f"closed×{self.result.connections}"
        return f"open {self.result.offered_rate:g}/s"


def _clean(result: PhaseResult, notes: list[str]) -> bool:
    """No failed exchange, no bad sampled reply; notes say what went wrong."""
    if result.errors:
        notes.append("errors: " + ", ".join(f"{k}×{v}" for k, v in sorted(result.errors.items())))
    if result.invalid:
        notes.append(f"{result.invalid} bad replies ({result.invalid_reason})")
    if result.exhausted:
        notes.append("pre-built pushes ran out: raise ClosedPlan.max_rate")
    if result.other_cpu is not None and result.other_cpu > _FOREIGN_CPU:
        notes.append(f"machine not idle: other processes used {result.other_cpu:.2f} cores")
    return not result.errors and not result.invalid and not result.exhausted


def _per_core(result: PhaseResult) -> float:
    """req/s per CPU of the process answering HTTP (the plain rate if unmeasured)."""
    cpu = result.http_cpu
    return result.rate / cpu if cpu else result.rate


def _note_spread(row: Row, result: PhaseResult, reference: PhaseResult) -> None:
    """How much the interleaved rounds disagreed: the noise around the ratio."""
    pairs = list(zip(result.round_rates, reference.round_rates, strict=False))
    if len(pairs) < 2:
        return
    if row.scenario == "baseline":
        low, high = min(result.round_rates), max(result.round_rates)
        row.notes.append(f"rounds {low:.0f}–{high:.0f} req/s")
    else:
        ratios = [mine / base for mine, base in pairs if base > 0]
        row.notes.append(f"ratio per round {min(ratios):.2f}–{max(ratios):.2f}×")


def judge(rows: Sequence[Row]) -> None:
    """Fill ratio, target and verdict of every row, comparing with the baseline rows."""
    baseline: Mapping[tuple[str, str], PhaseResult] = {
        (r.mode, r.shape): r.result for r in rows if r.scenario == "baseline" and r.result
    }
    for row in rows:
        result = row.result
        if result is None:
            row.verdict = "FAIL"
            continue
        clean = _clean(result, row.notes)
        if row.shape == "open":
            row.target = f"p99 < {OPEN_P99_MS:g} ms"
            reached = result.rate >= _RATE_SHORTFALL * result.offered_rate
            if not reached:
                row.notes.append(f"achieved only {result.rate:.0f}/s")
            ok = clean and reached and result.p99_ms < OPEN_P99_MS
            row.verdict = "PASS" if ok else "MISS"
            continue
        reference = baseline.get((row.mode, row.shape))
        if reference is not None and reference.rate > 0:
            row.ratio = result.rate / reference.rate
            row.core_ratio = _per_core(result) / _per_core(reference)
            _note_spread(row, result, reference)
        if row.scenario == "baseline":
            row.target, row.verdict = "reference", "ref" if clean else "MISS"
            row.core_ratio = row.ratio
            continue
        if row.scenario == "edge":
            wanted, judged, row.target = EDGE_RATIO, row.ratio, f"×base ≥ {EDGE_RATIO:g}"
        else:
            wanted, judged, row.target = STACK_RATIO, row.core_ratio, f"×/core ≥ {STACK_RATIO:g}"
        if judged is None:
            row.verdict = "n/a"
            row.notes.append("no baseline figure to compare with")
        else:
            row.verdict = "PASS" if clean and judged >= wanted else "MISS"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_COLUMNS = (
    ("scenario", 8), ("mode", 9), ("load", 12), ("req/s", 8), ("p50 ms", 7), ("p99 ms", 8),
    ("max ms", 8), ("errors", 6), ("×base", 5), ("×/core", 6), ("cpu", 11), ("target", 14),
    ("verdict", 7),
)  # fmt: skip


def _cpu_cell(result: PhaseResult | None) -> str:
    """Cores used: the HTTP process, and the whole server side when it has children."""
    if result is None or result.http_cpu is None or result.server_cpu is None:
        return "-"
    if result.server_cpu - result.http_cpu < 0.02:
        return f"{result.http_cpu:.2f}"
    return f"{result.http_cpu:.2f}/{result.server_cpu:.2f}"


def render_table(rows: Sequence[Row]) -> str:
    """The compact, fixed-width table."""
    lines = ["  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip()]
    lines.append("  ".join("-" * width for _, width in _COLUMNS))
    for row in rows:
        r = row.result
        cells = (
            row.scenario,
            row.mode,
            row.load_label(),
            _fmt(r.rate if r else None),
            _fmt(r.p50_ms if r else None, 2),
            _fmt(r.p99_ms if r else None, 2),
            _fmt(r.max_ms if r else None, 2),
            str(r.error_count + r.invalid) if r else "-",
            _fmt(row.ratio, 2),
            _fmt(row.core_ratio, 2),
            _cpu_cell(r),
            row.target,
            row.verdict,
        )
        lines.append("  ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)))
        lines.extend(f"    ↳ {note}" for note in row.notes)
        if row.failure:
            lines.append(f"    ↳ did not run: {row.failure}")
    if any(r.result and (r.result.other_cpu or 0) > _FOREIGN_CPU for r in rows):
        lines.append("WARNING: other processes used the CPUs during the run; do not trust it.")
    return "\n".join(line.rstrip() for line in lines)


def to_json(rows: Sequence[Row], context: Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable report: run context, targets and every row."""
    return {
        **context,
        "targets": {
            "edge_ratio_min": EDGE_RATIO,
            "stack_ratio_min_per_core": STACK_RATIO,
            "open_rate": OPEN_RATE,
            "open_p99_ms_max": OPEN_P99_MS,
        },
        "rows": [
            {
                "scenario": row.scenario,
                "mode": row.mode,
                "shape": row.shape,
                "ratio_vs_baseline": None if row.ratio is None else round(row.ratio, 3),
                "ratio_per_http_core": None if row.core_ratio is None else round(row.core_ratio, 3),
                "target": row.target,
                "verdict": row.verdict,
                "notes": row.notes,
                "failure": row.failure,
                "result": row.result.to_json() if row.result else None,
            }
            for row in rows
        ],
    }

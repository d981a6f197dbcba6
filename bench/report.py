"""Targets, verdicts and the two renderings of a run: a compact table and JSON.

The targets come from the issue that asked for this suite:

* edge alone (stub core): closed-loop throughput ≥ 0.8× the bare handler's;
* whole path edge → core → Redis: ≥ 0.5× the bare handler's per edge core (the whole
  server side runs on one pinned CPU, so the plain ratio is the per-core ratio);
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


@dataclass
class Row:
    """One line of the report: a scenario × mode × load shape, and how it fared."""

    scenario: str  # baseline | edge | stack
    mode: str  # plaintext | safe
    shape: str  # closed | open
    result: PhaseResult | None = None
    failure: str | None = None  # why the scenario produced no figures
    ratio: float | None = None  # closed loop: req/s over the baseline's, same mode
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
        notes.append("pre-built pushes ran out: raise PhaseSpec.max_rate")
    return not result.errors and not result.invalid and not result.exhausted


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
            row.target = f"p99<{OPEN_P99_MS:g}ms@{result.offered_rate:g}/s"
            reached = result.rate >= _RATE_SHORTFALL * result.offered_rate
            if not reached:
                row.notes.append(f"achieved only {result.rate:.0f}/s")
            ok = clean and reached and result.p99_ms < OPEN_P99_MS
            row.verdict = "PASS" if ok else "MISS"
            continue
        reference = baseline.get((row.mode, row.shape))
        if reference is not None and reference.rate > 0:
            row.ratio = result.rate / reference.rate
        if row.scenario == "baseline":
            row.target, row.verdict = "reference", "ref" if clean else "MISS"
            continue
        wanted = EDGE_RATIO if row.scenario == "edge" else STACK_RATIO
        row.target = f"≥{wanted:g}× baseline"
        if row.ratio is None:
            row.verdict = "n/a"
            row.notes.append("no baseline figure to compare with")
        else:
            row.verdict = "PASS" if clean and row.ratio >= wanted else "MISS"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_COLUMNS = (
    ("scenario", 8), ("mode", 9), ("load", 12), ("req/s", 8), ("p50 ms", 7), ("p99 ms", 8),
    ("max ms", 8), ("errors", 6), ("×base", 5), ("srv cpu", 7), ("target", 20), ("verdict", 7),
)  # fmt: skip


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
            _fmt(r.server_cpu if r else None, 2),
            row.target,
            row.verdict,
        )
        lines.append("  ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)))
        lines.extend(f"    ↳ {note}" for note in row.notes)
        if row.failure:
            lines.append(f"    ↳ did not run: {row.failure}")
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
                "target": row.target,
                "verdict": row.verdict,
                "notes": row.notes,
                "failure": row.failure,
                "result": row.result.to_json() if row.result else None,
            }
            for row in rows
        ],
    }

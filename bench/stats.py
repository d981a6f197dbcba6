"""What one load phase measured, and the arithmetic to summarize it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PhaseResult", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of an ascending sequence; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class PhaseResult:
    """One load shape against one server: counts, rate and latency (milliseconds).

    `requests` counts answers inside the measured window (after warm-up) that were
    HTTP 200 with a reply; `errors` counts everything else by reason. `rate` is
    answers per second over the window. `verified`/`invalid` count sampled replies
    checked the way WeChat would (signature, decryption, addressing, content).
    """

    shape: str  # "closed" or "open"
    connections: int
    offered_rate: float  # open loop: the fixed rate asked for; closed loop: 0
    duration: float
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    verified: int = 0
    invalid: int = 0
    invalid_reason: str | None = None
    exhausted: bool = False  # the pre-built pushes ran out before the window ended
    built: int = 0
    server_cpu: float | None = None  # cores used by the server and its child processes
    http_cpu: float | None = None  # cores used by the process answering HTTP, alone
    load_cpu: float | None = None  # cores used by the load generator
    steal: float | None = None  # share of the machine's CPU time stolen by the hypervisor
    other_cpu: float | None = None  # cores busy with anything but the server and the load
    round_rates: list[float] = field(default_factory=list)  # closed loop: each window's rate

    @property
    def error_count(self) -> int:
        """All failed exchanges, whatever the reason."""
        return sum(self.errors.values())

    def summarize(self, latencies: list[float], window: float) -> None:
        """Fill rate and percentiles from latencies in seconds over a `window` in seconds."""
        latencies.sort()
        self.requests = len(latencies)
        self.rate = self.requests / window if window > 0 else 0.0
        self.p50_ms = percentile(latencies, 50) * 1000
        self.p90_ms = percentile(latencies, 90) * 1000
        self.p99_ms = percentile(latencies, 99) * 1000
        self.max_ms = (latencies[-1] if latencies else 0.0) * 1000
        self.mean_ms = (sum(latencies) / len(latencies) if latencies else 0.0) * 1000

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (rounded)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 3)
        out["round_rates"] = [round(r, 1) for r in self.round_rates]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseResult:
        """The inverse of `to_json`."""
        return cls(**data)

"""The edge's Prometheus metrics (served on `/metrics`)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "CALLBACKS",
    "CALLBACK_DURATION",
    "CORE_CALLS",
    "REJECTED",
    "SPOOLED",
    "SPOOL_DEPTH",
    "SPOOL_DROPPED",
    "SPOOL_FAILURES",
    "SPOOL_REPLAYED",
    "registry",
]

CALLBACKS = Counter(
    "wxp_edge_callbacks_total", "WeChat callbacks answered, by app, method and HTTP status.",
    ["app_id", "method", "status"],
)  # fmt: skip
CALLBACK_DURATION = Histogram(
    "wxp_edge_callback_duration_seconds",
    "Time from request to response for WeChat callbacks.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 5),
)
REJECTED = Counter(
    "wxp_edge_rejected_total", "Callbacks refused, by reason (signature, payload, …).", ["reason"]
)
CORE_CALLS = Counter(
    "wxp_edge_core_calls_total", "Calls to core, by outcome (gRPC code).", ["code"]
)
# Set from the spool itself (shared by an edge's workers): the latest reading is the
# depth, whichever worker took it.
SPOOL_DEPTH = Gauge(
    "wxp_edge_spool_depth", "Pushes waiting in the spool for core.", multiprocess_mode="mostrecent"
)
SPOOLED = Counter(
    "wxp_edge_spooled_total", "Pushes written to the spool because core was unavailable."
)
SPOOL_REPLAYED = Counter("wxp_edge_spool_replayed_total", "Spooled pushes delivered to core.")
SPOOL_DROPPED = Counter(
    "wxp_edge_spool_dropped_total",
    "Spooled pushes given up, by reason (expired, rejected).",
    ["reason"],
)
SPOOL_FAILURES = Counter(
    "wxp_edge_spool_write_failures_total", "Pushes left unacknowledged because the spool failed."
)


def registry(multiprocess_dir: str | None) -> CollectorRegistry:
    """What `/metrics` exposes: this process's metrics, or those of every worker of
    the edge when they keep them in `multiprocess_dir` (`PROMETHEUS_MULTIPROC_DIR`)."""
    if multiprocess_dir is None:
        return REGISTRY
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return combined

"""Core's Prometheus metrics and the small HTTP server that exposes them."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from wxplatform.config import split_address

__all__ = [
    "INGRESS_MESSAGES",
    "INGRESS_REFUSED",
    "RPC_DURATION",
    "RPC_TOTAL",
    "SERVING",
    "WECHAT_CALLS",
    "WECHAT_DURATION",
    "MetricsServer",
]

RPC_TOTAL = Counter(
    "wxp_core_rpc_total", "gRPC calls handled, by method and status code.", ["method", "code"]
)
RPC_DURATION = Histogram(
    "wxp_core_rpc_duration_seconds",
    "gRPC call latency, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INGRESS_MESSAGES = Counter(
    "wxp_core_ingress_messages_total",
    "Inbound messages delivered by the edge, by app and outcome (new, duplicate).",
    ["app_id", "outcome"],
)
INGRESS_REFUSED = Counter(
    "wxp_core_ingress_refused_total",
    "Deliveries on the edge's stream that core refused, by reason (an ErrorReason name,"
    " or DEADLINE_EXCEEDED for one that waited past its timeout).",
    ["reason"],
)
SERVING = Gauge("wxp_core_serving", "1 while core accepts calls, 0 while draining.")


class MetricsServer:
    """`/metrics` over HTTP on its own port, served from a daemon thread."""

    def __init__(self, listen: str) -> None:
        host, port = split_address(listen)
        server, thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


WECHAT_CALLS = Counter(
    "wxp_core_wechat_calls_total",
    "Calls to WeChat's API, by path and outcome (ok, errcode_N, http_5xx, unreachable, …).",
    ["api", "outcome"],
)
WECHAT_DURATION = Histogram(
    "wxp_core_wechat_call_duration_seconds", "WeChat API call latency, by path.", ["api"]
)

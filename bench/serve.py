"""A server under test, in a process of its own: `python -m bench.serve KIND --spec FILE ...`.

KIND is `baseline` (the bare handler), `edge` (the edge with a stub core) or `stack`
(edge and core in this one process, sharing its event loop as `wxplatform dev` runs
them, with an embedded redis-server as a child process). Once listening it prints one
JSON line `{"port": N}` on stdout, then serves until its stdin reaches end of file (the
driver finished or died), SIGTERM/SIGINT, or `--max-seconds` pass.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import tornado.httpserver
import tornado.netutil
import tornado.web

from bench.baseline import BaselineApp, make_baseline_app
from bench.spec import KEYWORD, REPLY, BenchSpec
from bench.stub import StubCore
from wxplatform.config import Settings
from wxplatform.logs import configure_logging

__all__ = ["KINDS", "main"]

KINDS = ("baseline", "edge", "stack")


def _listen(
    app: tornado.web.Application, settings: Settings
) -> tuple[tornado.httpserver.HTTPServer, int]:
    """An HTTP server on a free loopback port, configured as `edge.app.start_edge` does."""
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    http = tornado.httpserver.HTTPServer(
        app, max_body_size=settings.edge.max_body_bytes, idle_connection_timeout=60
    )
    http.add_sockets(sockets)
    return http, int(sockets[0].getsockname()[1])


def _baseline_apps(settings: Settings) -> dict[str, BaselineApp]:
    apps: dict[str, BaselineApp] = {}
    for app in settings.apps.values():
        key = app.encoding_aes_key
        apps[app.app_id] = BaselineApp(
            app_id=app.app_id,
            token=app.token.reveal(),
            aes_key=base64.b64decode(key.reveal() + "=") if key is not None else None,
            keyword=KEYWORD,
            reply=REPLY,
        )
    return apps


@contextlib.asynccontextmanager
async def _baseline(settings: Settings) -> AsyncIterator[int]:
    http, port = _listen(make_baseline_app(_baseline_apps(settings)), settings)
    try:
        yield port
    finally:
        http.stop()
        await http.close_all_connections()


@contextlib.asynccontextmanager
async def _edge_with_stub(settings: Settings) -> AsyncIterator[int]:
    from edge.app import make_app
    from edge.core_client import CoreClient

    # Duck-typed: the stub has CoreClient's `deliver` coroutine, nothing else is used.
    core = cast(CoreClient, StubCore(REPLY))
    http, port = _listen(make_app(settings, core), settings)
    try:
        yield port
    finally:
        http.stop()
        await http.close_all_connections()


@contextlib.asynccontextmanager
async def _stack(settings: Settings, spec: BenchSpec, workdir: Path) -> AsyncIterator[int]:
    from edge.app import start_edge
    from wxplatform.config import Secret
    from wxplatform.core.adapters.redis_client import connect
    from wxplatform.core.server import create_server
    from wxplatform.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis(workdir / "redis")
    url = await asyncio.to_thread(redis_server.start)
    client = connect(url)
    try:
        core = await create_server(settings, client, listen="127.0.0.1:0", serve_metrics=False)
        try:
            edge_config = dataclasses.replace(
                settings.edge,
                core_target=f"127.0.0.1:{core.port}",
                core_credential=Secret(spec.edge_credential),
            )
            edge = await start_edge(
                dataclasses.replace(settings, edge=edge_config), listen="127.0.0.1:0"
            )
            try:
                yield edge.port
            finally:
                await edge.stop(grace_seconds=1.0)
        finally:
            await core.stop()
    finally:
        await client.aclose()
        await asyncio.to_thread(redis_server.stop)


def _watch_for_stop(stop: asyncio.Event, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(max_seconds, stop.set)  # never outlive a run, whatever happens

    def stdin_readable() -> None:
        if not os.read(0, 4096):  # end of file: the driver closed the pipe or died
            loop.remove_reader(0)
            stop.set()

    with contextlib.suppress(OSError, ValueError):  # no usable stdin: rely on the rest
        loop.add_reader(0, stdin_readable)


async def _serve(kind: str, spec: BenchSpec, workdir: Path, max_seconds: float) -> None:
    settings = spec.settings(workdir)
    if kind != "baseline":
        # Log as `wxplatform edge`/`core` do (stderr goes to a file the driver chose).
        configure_logging(kind, settings.log_level)
    stop = asyncio.Event()
    _watch_for_stop(stop, max_seconds)
    running = (
        _baseline(settings)
        if kind == "baseline"
        else _edge_with_stub(settings)
        if kind == "edge"
        else _stack(settings, spec, workdir)
    )
    async with running as port:
        sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server under test until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (and children)")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        # Before anything starts: redis-server and gRPC's threads inherit the mask.
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_serve(args.kind, BenchSpec.load(args.spec), args.workdir, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

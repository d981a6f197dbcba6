"""A server under test, in a process of its own: `python -m bench.serve KIND --spec FILE ...`.

KIND is `baseline` (the bare handler), `edge` (the edge with a stub core) or `stack`
(the edge in this process, delivering over gRPC to `core`: core in a child process
with an embedded redis-server as its child). `edge2` and `stack2` are the same with the
edge in two worker processes sharing one port (SO_REUSEPORT, `[edge] processes = 2`):
this process and an `edge-worker` child. Once listening it prints one JSON line
`{"port": N, "pid": N}` on stdout, then serves until its stdin reaches end of file
(the driver finished or died), SIGTERM/SIGINT, or `--max-seconds` pass.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import tornado.httpserver
import tornado.netutil
import tornado.web

from bench.baseline import BaselineApp, make_baseline_app
from bench.spec import KEYWORD, REPLY, BenchSpec
from bench.stub import StubCore
from wxplatform.config import Settings
from wxplatform.logs import configure_logging

__all__ = ["KINDS", "core_on_embedded_redis", "main"]

# `core` and `edge-worker` are children of the stack and of the two-worker kinds.
KINDS = ("baseline", "edge", "stack", "edge2", "stack2", "core", "edge-worker")


def _listen(
    app: tornado.web.Application, options: dict[str, Any]
) -> tuple[tornado.httpserver.HTTPServer, int]:
    """An HTTP server with `options` on a free loopback port."""
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    http = tornado.httpserver.HTTPServer(app, **options)
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
    options = {"max_body_size": settings.edge.max_body_bytes, "idle_connection_timeout": 60}
    http, port = _listen(make_baseline_app(_baseline_apps(settings)), options)
    try:
        yield port
    finally:
        http.stop()
        await http.close_all_connections()


@contextlib.asynccontextmanager
async def _edge_with_stub(settings: Settings) -> AsyncIterator[int]:
    """The edge composed by `edge.app.start_edge`, with `StubCore` in place of gRPC."""
    from edge.app import start_edge
    from edge.core_client import CoreClient

    # Duck-typed: the stub has CoreClient's `deliver` (and `close`); nothing else is used.
    edge = await start_edge(settings, listen="127.0.0.1:0", core=cast(CoreClient, StubCore(REPLY)))
    try:
        yield edge.port
    finally:
        await edge.stop(grace_seconds=1)


@contextlib.asynccontextmanager
async def core_on_embedded_redis(
    settings: Settings, workdir: Path
) -> AsyncIterator[tuple[int, str]]:
    """Core on a free port, on its own embedded redis-server (a child process): the
    port and Redis's URL."""
    from wxplatform.core.adapters.redis_client import connect
    from wxplatform.core.server import create_server
    from wxplatform.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis(workdir / "redis")
    url = await asyncio.to_thread(redis_server.start)
    client = connect(url)
    try:
        core = await create_server(settings, client, listen="127.0.0.1:0", serve_metrics=False)
        try:
            yield core.port, url
        finally:
            await core.stop()
    finally:
        await client.aclose()
        await asyncio.to_thread(redis_server.stop)


@contextlib.asynccontextmanager
async def _core(settings: Settings, workdir: Path) -> AsyncIterator[int]:
    async with core_on_embedded_redis(settings, workdir) as (port, _):
        yield port


@contextlib.asynccontextmanager
async def _stack(
    settings: Settings, spec: BenchSpec, spec_path: Path, workdir: Path
) -> AsyncIterator[int]:
    """The edge here, delivering over gRPC to core in a child process (`_core`).

    Two processes, as edge and core are deployed; the child inherits this process's
    CPU mask, so the whole path shares the one CPU the driver gave the server side.
    """
    from bench.procs import ServerProcess
    from edge.app import start_edge

    core = ServerProcess("core", spec_path, workdir / "core")
    await asyncio.to_thread(core.start)
    try:
        edge = await start_edge(_pointed_at_core(settings, spec, core.port), listen="127.0.0.1:0")
        try:
            yield edge.port
        finally:
            await edge.stop(grace_seconds=1.0)
    finally:
        await asyncio.to_thread(core.stop)


@contextlib.asynccontextmanager
async def _two_workers(
    settings: Settings, spec: BenchSpec, spec_path: Path, workdir: Path, *, with_core: bool
) -> AsyncIterator[int]:
    """Two edge workers on one port: this process and an `edge-worker` child.

    With `with_core`, both deliver over gRPC to one core (a child, with its own
    redis-server); otherwise both answer from the stub core.
    """
    from bench.procs import ServerProcess
    from edge.app import start_edge
    from edge.core_client import CoreClient

    async with contextlib.AsyncExitStack() as stack:
        core_args: list[str] = []
        if with_core:
            core = ServerProcess("core", spec_path, workdir / "core")
            await asyncio.to_thread(core.start)
            stack.callback(core.stop)
            settings = _pointed_at_core(settings, spec, core.port)
            core_args = ["--core-port", str(core.port)]
        stub = None if with_core else cast(CoreClient, StubCore(REPLY))
        # One worker per CPU, as `[edge] processes` is meant to be used; core, Redis and
        # the load generator float over both.
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            os.sched_setaffinity(0, {cpus[0]})
        edge = await start_edge(settings, listen="127.0.0.1:0", core=stub, reuse_port=True)
        stack.push_async_callback(edge.stop, 1.0)
        worker = ServerProcess(
            "edge-worker",
            spec_path,
            workdir / "worker",
            cpu=cpus[1] if len(cpus) >= 2 else None,
            extra_args=["--port", str(edge.port), *core_args],
        )
        await asyncio.to_thread(worker.start)
        stack.callback(worker.stop)
        yield edge.port


@contextlib.asynccontextmanager
async def _edge_worker(
    settings: Settings, spec: BenchSpec, port: int, core_port: int | None
) -> AsyncIterator[int]:
    """The second worker of `_two_workers`, on the same port."""
    from edge.app import start_edge
    from edge.core_client import CoreClient

    if core_port is not None:
        settings = _pointed_at_core(settings, spec, core_port)
    stub = None if core_port is not None else cast(CoreClient, StubCore(REPLY))
    edge = await start_edge(settings, listen=f"127.0.0.1:{port}", core=stub, reuse_port=True)
    try:
        yield edge.port
    finally:
        await edge.stop(grace_seconds=1.0)


def _pointed_at_core(settings: Settings, spec: BenchSpec, core_port: int) -> Settings:
    from wxplatform.config import Secret

    edge = msgspec.structs.replace(
        settings.edge,
        core_target=f"127.0.0.1:{core_port}",
        core_credential=Secret(spec.edge_credential),
    )
    return msgspec.structs.replace(settings, edge=edge)


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


def _running(
    kind: str, spec: BenchSpec, spec_path: Path, workdir: Path, args: argparse.Namespace
) -> contextlib.AbstractAsyncContextManager[int]:
    settings = spec.settings(workdir)
    if kind == "baseline":
        return _baseline(settings)
    # Log as `wxplatform edge`/`core` do (stderr goes to a file the driver chose).
    configure_logging(kind, settings.log_level)
    if kind == "edge":
        return _edge_with_stub(settings)
    if kind == "core":
        return _core(settings, workdir)
    if kind in ("edge2", "stack2"):
        return _two_workers(settings, spec, spec_path, workdir, with_core=kind == "stack2")
    if kind == "edge-worker":
        return _edge_worker(settings, spec, args.port, args.core_port)
    return _stack(settings, spec, spec_path, workdir)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    _watch_for_stop(stop, args.max_seconds)
    spec_path, kind, workdir = args.spec, args.kind, args.workdir
    async with _running(kind, BenchSpec.load(spec_path), spec_path, workdir, args) as port:
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
    parser.add_argument("--port", type=int, default=0, help="edge-worker: the shared port")
    parser.add_argument("--core-port", type=int, default=None, help="edge-worker: core's port")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        # Before anything starts: redis-server and gRPC's threads inherit the mask.
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

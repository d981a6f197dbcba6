"""`wxplatform` command line: `core`, `edge`, `sim` and `dev`.

Each subcommand only loads settings, starts its process and drains on SIGTERM/SIGINT;
the wiring lives in the composition roots (`create_server`, `start_edge`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from wxplatform.config import ConfigError, Settings, load_settings, split_address
from wxplatform.logs import configure_logging
from wxplatform.runtime import stop_on_signals

__all__ = ["main"]

log = logging.getLogger("wxplatform")


async def run_core(settings: Settings) -> None:
    """Serve core until SIGTERM/SIGINT, then drain."""
    from wxplatform.core.adapters.redis_client import connect
    from wxplatform.core.server import create_server

    if settings.redis.url is None:
        raise ConfigError(
            "redis.url", "is required (an embedded Redis is for `wxplatform dev` only)"
        )
    stop = stop_on_signals()
    client = connect(settings.redis.url.reveal())
    try:
        core = await create_server(settings, client)
        await stop.wait()
        await core.stop()
    finally:
        await client.aclose()


async def run_edge(
    settings: Settings, *, worker_of: str | None = None, supervisor: int | None = None
) -> None:
    """Serve the edge until SIGTERM/SIGINT, then finish in-flight pushes.

    `worker_of`: this process is one worker of a multi-process edge, and the path is
    the workers' shared metrics directory.
    """
    from edge.app import start_edge

    stop = stop_on_signals()
    # A worker's parent is its supervisor, which told us its pid: any other parent means
    # the supervisor is gone (even one not yet reaped: a zombie would still seem alive).
    parent = supervisor if supervisor is not None else os.getppid()
    if os.getppid() != parent:
        # Orphaned while still starting up: go no further.
        log.warning("edge supervisor gone before this worker started", extra={"parent": parent})
        return

    async def stop_when_orphaned() -> None:
        # The supervisor drains its workers on SIGTERM; killed outright (SIGKILL, OOM),
        # it leaves them serving the port with nobody to restart or stop them. Its
        # workers are then re-parented (to init or a subreaper): drain as on SIGTERM.
        while True:
            await asyncio.sleep(1)
            if os.getppid() != parent:
                break
        log.warning("edge supervisor gone; draining this worker", extra={"parent": parent})
        stop.set()

    watch = asyncio.create_task(stop_when_orphaned()) if worker_of is not None else None
    try:
        edge = await start_edge(settings, reuse_port=worker_of is not None, metrics_dir=worker_of)
        await stop.wait()
        await edge.stop()
    finally:
        if watch is not None:
            watch.cancel()


def edge_command(settings: Settings, config: str | None, environ: dict[str, str]) -> int:
    """`wxplatform edge`: one process, or a supervisor of `[edge] processes` workers."""
    if settings.edge.core_credential is None:
        raise ConfigError("edge.core_credential", "is required: the edge authenticates to core")
    if settings.edge.processes == 1:
        asyncio.run(run_edge(settings))
        return 0
    from edge.workers import METRICS_DIR_ENV, supervise

    if METRICS_DIR_ENV in environ and environ.get("WXP_EDGE_WORKER", "").isdigit():
        supervisor = int(environ["WXP_EDGE_WORKER"])
        asyncio.run(run_edge(settings, worker_of=environ[METRICS_DIR_ENV], supervisor=supervisor))
        return 0
    command = [sys.executable, "-m", "wxplatform", *(["--config", config] if config else [])]
    return supervise(
        settings.edge.processes,
        [*command, "edge"],
        {**environ, "WXP_EDGE_WORKER": str(os.getpid())},
        # A worker's own stop: up to 5 s for pushes in flight, the replay in progress
        # (one push budget), then up to 5 s for core's answers on its stream; and room.
        grace_seconds=settings.edge.budget_seconds + 20,
    )


async def run_sim(settings: Settings, listen: str | None) -> None:
    """Serve the WeChat simulator until SIGTERM/SIGINT."""
    from wxplatform.sim import WeChatSimulator

    stop = stop_on_signals()
    edge_url = f"http://{settings.edge.listen}"
    sim = WeChatSimulator(settings.apps, callback_urls=dict.fromkeys(settings.apps, edge_url))
    await sim.start(*split_address(listen or settings.dev.sim_listen))
    log.info("simulator serving", extra={"url": sim.base_url})
    await stop.wait()
    await sim.stop()


async def sim_push(
    settings: Settings, app_id: str, text: str, openid: str, edge_url: str | None
) -> int:
    """Push one signed text message to the edge the way WeChat does; print the outcome.

    Through the running simulator when there is one (`wxplatform dev`), so that it also
    learns of the user's interaction (which opens a customer-service window, as on
    WeChat); otherwise straight from this process.
    """
    import aiohttp

    from wxplatform.sim import original_id, push, text_message

    app = settings.apps.get(app_id)
    if app is None:
        raise ConfigError(
            "--app", f"unknown app {app_id!r}; configured: {', '.join(settings.apps)}"
        )
    base = edge_url or f"http://{settings.edge.listen}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client,
            client.post(
                f"http://{settings.dev.sim_listen}/_sim/push",
                json={"app_id": app_id, "edge_url": base, "text": text, "openid": openid},
            ) as answer,
        ):
            outcome: dict[str, Any] = await answer.json()
    except aiohttp.ClientConnectionError:
        outcome = (await push(app, base, text_message(original_id(app_id), openid, text))).to_json()
    shown = {k: outcome.get(k) for k in ("status", "attempts", "reply", "error")}
    print(
        json.dumps(
            {"app_id": app_id, "mode": app.encryption, **shown}, ensure_ascii=False, indent=2
        )
    )
    return 0 if outcome.get("error") is None else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wxplatform", description="WeChat platform service.")
    parser.add_argument("--config", help="TOML config file (default: $WXP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("core", help="run the gRPC core")
    sub.add_parser("edge", help="run the public WeChat callback edge")
    dev = sub.add_parser("dev", help="run redis + simulator + core + edge on embedded defaults")
    dev.add_argument("--dir", default=".wxplatform", help="state directory (default .wxplatform)")
    sim = sub.add_parser("sim", help="run the WeChat simulator, or push a message with it")
    sim.add_argument("--listen", help="host:port (default [dev] sim_listen)")
    sim_sub = sim.add_subparsers(dest="sim_command")
    push = sim_sub.add_parser("push", help="push a signed text message to the edge")
    push.add_argument("--app", required=True, help="app_id to push as")
    push.add_argument("--text", default="hello", help="message content")
    push.add_argument("--openid", default="oDemoUser0000000000000000000", help="sender openid")
    push.add_argument("--edge", help="edge base URL (default http://[edge] listen)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wxplatform` console script."""
    args = _parser().parse_args(argv)
    environ = dict(os.environ)  # the one place the environment is read
    try:
        if args.command == "dev":
            from wxplatform.dev import run_dev

            return asyncio.run(run_dev(Path(args.dir), config=args.config, environ=environ))
        settings = load_settings(args.config, environ)
        if args.command == "sim" and args.sim_command == "push":
            configure_logging("sim", "WARNING")
            return asyncio.run(sim_push(settings, args.app, args.text, args.openid, args.edge))
        configure_logging(args.command, settings.log_level)
        if args.command == "edge":
            return edge_command(settings, args.config, environ)
        runners: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "core": lambda: run_core(settings),
            "sim": lambda: run_sim(settings, args.listen),
        }
        asyncio.run(runners[args.command]())
    except ConfigError as exc:
        print(f"wxplatform: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wxplatform: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

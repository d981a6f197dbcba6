"""Several edge processes on one port, for `[edge] processes` > 1.

A Python process runs Python on one CPU at a time, so an edge meant to use N CPUs runs
N worker processes. `wxplatform edge` then supervises: it starts each worker as
`wxplatform edge --worker`; every worker binds `[edge] listen` with SO_REUSEPORT, so the
kernel spreads WeChat's connections over them; they share the spool file (see
`edge.spool`) and keep their metrics in one directory, so `/metrics` on any worker
answers for all of them. SIGTERM or SIGINT to the supervisor drains every worker (each
finishes its in-flight pushes); a worker that dies is restarted, with a growing pause
if it keeps dying, and one that never starts (three deaths in a row) stops the edge with
exit status 1.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.multiprocess import mark_process_dead

__all__ = ["METRICS_DIR_ENV", "supervise"]

log = logging.getLogger("wxplatform.edge.workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in each worker
_POLL = 0.2
_RESTART_START, _RESTART_CAP = 1.0, 30.0
_HEALTHY_AFTER = 30.0  # a worker that ran this long resets its restart pause
# A worker that dies this many times in a row before it was healthy will not start at
# all (port taken, unusable spool, broken config): the supervisor gives up and exits 1
# rather than look alive while nothing serves.
_GIVE_UP_AFTER = 3


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    pause: float = _RESTART_START  # before the next restart, should it die
    failures: int = 0  # deaths in a row before it ran `_HEALTHY_AFTER`
    # Set while the worker is dead: when to start it again. A time rather than a wait,
    # so that the loop keeps watching the other workers (and SIGTERM) meanwhile.
    restart_at: float | None = None


def supervise(
    count: int, command: Sequence[str], environ: Mapping[str, str], *, grace_seconds: float
) -> int:
    """Run `count` workers (`command` starts one) until SIGTERM/SIGINT; 0 if all drained."""
    metrics_dir = tempfile.mkdtemp(prefix="wxp-edge-metrics-")
    env = {**environ, METRICS_DIR_ENV: metrics_dir}
    # A plain flag, not a threading.Event: the handler runs in the main thread between
    # two bytecodes, possibly while that thread holds the event's lock inside wait(),
    # and set() would then wait for that lock forever. time.sleep() is safe to interrupt.
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(command), env=env)

    workers = [_Worker(i, start(i)) for i in range(count)]
    log.info("edge workers started", extra={"workers": [w.process.pid for w in workers]})
    try:
        while not stopping:
            time.sleep(_POLL)
            for worker in workers:
                _tend(worker, start, metrics_dir, time.monotonic())
            if any(worker.failures >= _GIVE_UP_AFTER for worker in workers):
                log.error(
                    "an edge worker keeps failing to start; stopping the edge",
                    extra={"failures": _GIVE_UP_AFTER},
                )
                _drain(workers, grace_seconds)
                return 1
        return _drain(workers, grace_seconds)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _tend(
    worker: _Worker,
    start: Callable[[int], subprocess.Popen[bytes]],
    metrics_dir: str,
    now: float,
) -> None:
    """Notice a worker's death (once), and restart it when its pause is over."""
    if worker.restart_at is not None:
        if now >= worker.restart_at:
            worker.process = start(worker.index)
            worker.started, worker.restart_at = now, None
        return
    code = worker.process.poll()
    if code is None:
        return
    mark_process_dead(worker.process.pid, metrics_dir)  # type: ignore[no-untyped-call]
    if now - worker.started >= _HEALTHY_AFTER:
        worker.pause, worker.failures = _RESTART_START, 0
    worker.failures += 1
    if worker.failures >= _GIVE_UP_AFTER:
        log.error("edge worker exited", extra={"worker": worker.index, "code": code})
        return
    log.error(
        "edge worker exited; restarting it",
        extra={"worker": worker.index, "code": code, "pause_s": worker.pause},
    )
    worker.restart_at = now + worker.pause
    worker.pause = min(worker.pause * 2, _RESTART_CAP)  # in case it dies again soon


def _drain(workers: list[_Worker], grace_seconds: float) -> int:
    """SIGTERM every worker, wait for them to finish their pushes, kill the stragglers.

    Only the workers running when the drain begins count for the exit code: one that
    died earlier is logged as any dead worker, and its restart is simply not made.
    """
    running = []
    clean = True
    for worker in workers:
        if worker.restart_at is not None or worker.failures >= _GIVE_UP_AFTER:
            continue  # dead and already logged
        code = worker.process.poll()
        if code is None:
            running.append(worker)
        else:  # died since the last look
            log.error("edge worker exited", extra={"worker": worker.index, "code": code})
    log.info("draining edge workers", extra={"workers": len(running), "grace_s": grace_seconds})
    for worker in running:
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for worker in running:
        try:
            code = worker.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            log.error(
                "edge worker did not drain in time; killing it", extra={"worker": worker.index}
            )
            worker.process.kill()
            code = worker.process.wait()
        # Killed by the SIGTERM itself: it was still starting, with nothing in flight.
        clean = clean and code in (0, -signal.SIGTERM)
    log.info("edge workers stopped")
    return 0 if clean else 1

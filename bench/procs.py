"""The driver's side of the processes: start a server under test, run a load process.

Both are plain child processes of the driver (`python -m bench.serve`, `python -m
bench.job`), started from the project root so `bench` imports. Each is bounded: a
server stops when its stdin closes and on its own after `--max-seconds`; a load
process is killed if it outlives its timeout.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.job import LoadJob
from bench.stats import PhaseResult

__all__ = ["ROOT", "BenchProcessError", "ServerProcess", "cpu_plan", "run_load"]

ROOT = Path(__file__).resolve().parent.parent


class BenchProcessError(RuntimeError):
    """A child process did not start or did not finish as expected."""


def cpu_plan() -> tuple[int | None, int | None]:
    """(server CPU, load CPU): two different CPUs when this process may use two or more."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerProcess:
    """A running `python -m bench.serve KIND` (or `module`); use as a context manager."""

    def __init__(
        self,
        kind: str,
        spec_path: Path,
        workdir: Path,
        *,
        cpu: int | None = None,
        max_seconds: float = 600.0,
        ready_timeout: float = 60.0,
        module: str = "bench.serve",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.workdir = workdir
        self.log_path = workdir / f"{kind}.log"
        self.port = 0
        self.pid = 0
        self.ready: dict[str, Any] = {}  # the whole ready line (port, pid, and any extras)
        self._args = [
            sys.executable, "-m", module, kind,
            "--spec", str(spec_path), "--workdir", str(workdir),
            "--max-seconds", str(max_seconds),
        ]  # fmt: skip
        if cpu is not None:
            self._args += ["--cpu", str(cpu)]
        self._args += list(extra_args)
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def spawn(self) -> None:
        """Start the process; `wait_ready` then waits for its port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self._args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        self.pid = self._process.pid

    def wait_ready(self) -> int:
        """Wait until the server listens; its port. Stops it and raises if it cannot."""
        self.ready = json.loads(self._read_ready_line())
        self.port = int(self.ready["port"])
        return self.port

    def start(self) -> int:
        """Start the server and wait for its port."""
        self.spawn()
        return self.wait_ready()

    def _read_ready_line(self) -> bytes:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        buffer = b""
        deadline = time.monotonic() + self._ready_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise BenchProcessError(f"{self.kind} server did not start in time")
                if selector.select(left):
                    chunk = os.read(stdout.fileno(), 4096)
                    if not chunk:
                        self.stop()
                        raise BenchProcessError(
                            f"{self.kind} server exited before it was ready:\n"
                            + _tail(self.log_path)
                        )
                    buffer += chunk
        return buffer.split(b"\n", 1)[0]

    def stop(self) -> None:
        """Close its stdin (it then shuts down cleanly); escalate if it does not exit."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_load(job: LoadJob, *, timeout: float) -> dict[str, list[PhaseResult]]:
    """Run the load process (`python -m bench.job`) with `job`; its results by target."""
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.job"],
            cwd=ROOT,
            input=job.to_json().encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchProcessError(f"load generator still running after {timeout:.0f} s") from None
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise BenchProcessError("load generator failed:\n" + "\n".join(stderr))
    results: dict[str, list[dict[str, Any]]] = json.loads(completed.stdout)
    return {name: [PhaseResult.from_json(r) for r in rs] for name, rs in results.items()}

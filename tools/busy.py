"""Run a command on a busy machine: one busy-loop process per CPU beside it.

The burners run at the command's own priority, so the command gets about half of each
core, as on a CI machine whose other jobs keep every core busy. Races that need a
starved task to lose (a lock that expires under its holder, a cache written after its
invalidation) show up here and almost never on an idle machine.

    python tools/busy.py [--burners N] -- COMMAND [ARG ...]

`make test-busy` runs the suite this way (see the Makefile).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_BURN = "while True: pass"


def main(argv: list[str] | None = None) -> int:
    """Start the burners, run the command, stop the burners; the command's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--burners", type=int, default=os.cpu_count() or 1, help="busy loops (default: CPUs)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required")
    burners = [
        subprocess.Popen([sys.executable, "-c", _BURN], stdin=subprocess.DEVNULL)
        for _ in range(args.burners)
    ]
    print(f"busy: {len(burners)} busy loop(s) beside {' '.join(command)}", file=sys.stderr)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()


if __name__ == "__main__":
    sys.exit(main())

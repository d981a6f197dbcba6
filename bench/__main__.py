"""`python -m bench`: run the benchmark suite."""

from __future__ import annotations

from bench.cli import main

raise SystemExit(main())

"""The core process: wxplatform's gRPC API, in three layers.

`servicers` (gRPC ⇄ domain, one call each) → `services` (rules, no I/O libraries) →
`adapters` (the only code that touches Redis or WeChat's HTTP API). `server` is the
composition root. `make check` enforces the layering with import-linter.
"""

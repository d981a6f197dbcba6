"""Benchmarks for the callback path: `python -m bench` (or `make bench`).

Measures throughput and latency of WeChat pushes on loopback for a bare Tornado
baseline handler, the edge with an in-process stub core, and the whole path edge →
core → Redis, in plaintext and safe mode. Every server under test and the load
generator run in processes of their own. This is not a test: it prints figures.
"""

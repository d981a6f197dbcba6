"""Adapters: the only modules that talk to Redis or to WeChat's HTTP API."""

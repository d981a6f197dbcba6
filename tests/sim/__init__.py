"""Tests of the WeChat simulator (wxplatform.sim)."""

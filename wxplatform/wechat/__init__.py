"""WeChat's wire protocols as pure functions: signatures, message crypto, XML.

Nothing here does I/O; the edge, core and the simulator all build on it.
"""

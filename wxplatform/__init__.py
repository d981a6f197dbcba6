"""wxplatform: one service through which internal teams use WeChat.

Start reading at README.md, then docs/architecture.md, then `protos/`, then the two
composition roots: `wxplatform.core.server.create_server` and `edge.app.make_app`.
"""

__version__ = "0.1.0"

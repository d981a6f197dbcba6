"""The edge process: WeChat's public callback endpoint.

Verifies, decrypts and safely parses each push, normalizes it into an `InboundMessage`,
hands it to core over gRPC inside WeChat's 5-second window, and renders the reply.
`edge.app.make_app` is the composition root.
"""

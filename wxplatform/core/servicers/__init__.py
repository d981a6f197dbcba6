"""gRPC-facing layer: servicers, interceptors and the error-to-status table."""

"""Services of the API that this server does not implement yet.

Every RPC of these services is served (so auth, logging and metrics apply as to any
other call) and answers UNIMPLEMENTED with reason NOT_IMPLEMENTED. Later work replaces
each with a real servicer; docs/architecture.md lists which are still here.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from wxplatform.errors import NotImplementedYet

__all__ = ["unimplemented_handler"]


def unimplemented_handler(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """A handler answering every method of `service` with NOT_IMPLEMENTED."""
    from google.protobuf import symbol_database

    db = symbol_database.Default()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type: Any = db.GetSymbol(method.input_type.full_name)
        response_type: Any = db.GetSymbol(method.output_type.full_name)
        what = f"{service.name}/{method.name} is not implemented yet"

        # A coroutine serves streaming methods too: it ends the call before any write.
        async def refuse(request: Any, context: Any, what: str = what) -> Any:
            raise NotImplementedYet(what)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            refuse,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)

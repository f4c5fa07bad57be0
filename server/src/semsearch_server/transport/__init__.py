"""gRPC transport: proto <-> domain conversion, the error table, server construction."""

"""The console: a single web page and the JSON endpoints it calls, served beside the gRPC server.

gateway.py turns a JSON call into the same SearchServicer call a gRPC client makes (the protobuf JSON mapping
in, the same in out, the same API keys); web.py serves it and the page (static/) with Starlette on uvicorn.
"""

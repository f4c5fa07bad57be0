"""The console over HTTP: the page and its assets (package data, static/) and POST /api/v1/<Rpc>.

Starlette on uvicorn, in a thread of the server's process: the endpoints are synchronous, so Starlette runs
each in its thread pool, where the servicer's calls may block as they do under gRPC.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from semsearch_server.console.gateway import JsonGateway

log = logging.getLogger(__name__)

STATIC_PACKAGE = ("semsearch_server.console", "static")
# Everything the page loads comes from this server: a CDN font or script would not load offline, and
# the policy makes the browser refuse one if it ever slips in.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_MAX_BODY_BYTES = 4 * 1024 * 1024


def build_app(gateway: JsonGateway) -> Starlette:
    """The Starlette application: GET / (the page), /static/... and POST /api/v1/<Rpc>."""
    static = StaticFiles(packages=[STATIC_PACKAGE])

    def page(request: Request) -> Response:
        # The page's state lives in its query string (?q=...&explain=c3), read by console.js.
        response = FileResponse(_static_path("index.html"), media_type="text/html; charset=utf-8")
        response.headers.update(_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def api_call(request: Request) -> Response:
        body = await request.body()
        if len(body) > _MAX_BODY_BYTES:
            return JSONResponse({"error": {"code": 413, "message": "request body over 4 MiB"}}, status_code=413)
        peer = f"http:{request.client.host}:{request.client.port}" if request.client else "http"
        reply = await run_in_threadpool(
            gateway.call, request.path_params["rpc"], body, request.headers.get("authorization"), peer
        )
        headers = dict(_HEADERS, **{"Cache-Control": "no-store"})
        if reply.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="semsearch"'
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/v1/{rpc}", api_call, methods=["POST"]),
            Mount("/static", app=static, name="static"),
        ]
    )


def _static_path(name: str) -> str:
    from importlib.resources import files

    return str(files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1], name))


class ConsoleServer:
    """uvicorn serving the console on its own thread; `port` is the bound port (useful when asked for 0).

    Raises:
        OSError: the port is taken (raised by the constructor, before any thread starts).
    """

    def __init__(self, gateway: JsonGateway, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=128)
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            build_app(gateway), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="console-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()


def start_console(servicer, auth, host: str, port: int | None) -> ConsoleServer | None:
    """The console on http://<host>:<port>/, or None when no console port is configured."""
    if port is None:
        return None
    return ConsoleServer(JsonGateway(servicer, auth), host, port)

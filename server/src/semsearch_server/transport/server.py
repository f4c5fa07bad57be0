"""Building the gRPC server, separate from running it, so tests can start one on port 0."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from semsearch.v1 import search_service_pb2 as pb
from semsearch.v1 import search_service_pb2_grpc as pb_grpc

from semsearch_server.config import ServerConfig
from semsearch_server.transport.decoding import MalformedRequestInterceptor
from semsearch_server.transport.servicer import SearchServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = config.tls_cert.read_bytes()
    key = config.tls_key.read_bytes()
    root = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=root, require_client_auth=root is not None)


def create_server(
    config: ServerConfig,
    servicer: SearchServicer,
    health_servicer: health.HealthServicer,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> tuple[grpc.Server, int]:
    """Returns a built (not started) server and the port it is bound to."""
    limit = config.limits.max_message_bytes
    # An open UpsertStream holds its thread until it ends, silent or not: the pool has `workers` threads
    # for everything else on top of one per stream the gate (transport/streams.py) lets open.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers + config.max_streams, thread_name_prefix="grpc"),
        interceptors=[*interceptors, MalformedRequestInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.workers * 16 + config.max_streams,
    )
    pb_grpc.add_SearchServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config)
    taken = OSError(
        f"cannot listen on {address}: the port is in use (another semsearch-server?) or not allowed; "
        "stop the other process or choose another port with --port (SEMSEARCH_PORT)"
    )
    # Asked first, so that a taken port is said in that one line, not also in a line of gRPC's core.
    if config.port and not _can_bind(config.host, config.port):
        raise taken
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind to address": taken since the check above
        port = 0
    if port == 0:
        raise taken
    return server, port


def _can_bind(host: str, port: int) -> bool:
    """Whether a listening socket could be bound at host:port now (as gRPC binds it: SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True  # let gRPC say what is wrong with the address
    for family, kind, proto, _, sockaddr in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError:
                return False
    return True


def set_health(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in HEALTH_SERVICES:
        health_servicer.set(name, status)

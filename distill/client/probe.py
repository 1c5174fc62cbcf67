"""python -m distill.client.probe [--address 127.0.0.1:50051] [--timeout 5]

The container health check: one `grpc.health.v1` Check; exit 0 only when the answer is SERVING
(1 for NOT_SERVING, warming up or draining; 2 when nobody answers). The address defaults to this
machine's teacher port (TEACHER_PORT, as the server reads it). With TLS on the server, give the CA
(and for mutual TLS a client certificate) and the name in the server's certificate.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distill.tls import add_tls_arguments, channel_credentials


def check(address: str, timeout: float = 5.0, service: str = "",
          credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None) -> int:
    """The health status code of `service` at `address` (health_pb2.HealthCheckResponse)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.secure_channel(address, credentials, options) if credentials
               else grpc.insecure_channel(address, options))
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return reply.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.client.probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=f"127.0.0.1:{os.environ.get('TEACHER_PORT', '50051')}")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--service", default="", help="'' is the whole server")
    add_tls_arguments(parser)
    parser.add_argument("--server-name", help="name in the server's certificate, if not the address")
    args = parser.parse_args(argv)
    credentials = channel_credentials(args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        status = check(args.address, args.timeout, args.service, credentials, args.server_name)
    except grpc.RpcError as err:
        print(f"{args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.address}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

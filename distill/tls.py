"""TLS credentials for clients of the teacher (the worker's client, the container probe)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc


def channel_credentials(tls: bool = False, tls_ca: str | None = None, tls_cert: str | None = None,
                        tls_key: str | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM file paths; None (plaintext) when no TLS option is given.
    `tls_ca`: the CA that signed the server's certificate (default: the system's CAs);
    `tls_cert` + `tls_key`: this client's certificate and key, for mutual TLS."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together (the client's certificate and its key)")
    if not (tls or tls_ca or tls_cert):
        return None
    read = lambda path: Path(path).read_bytes() if path else None
    return grpc.ssl_channel_credentials(root_certificates=read(tls_ca), private_key=read(tls_key),
                                        certificate_chain=read(tls_cert))


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls, --tls-ca, --tls-cert, --tls-key for a command-line client of the teacher; pass the
    parsed values to `channel_credentials`."""
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) that signed the server's certificate")
    parser.add_argument("--tls-cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM), for mutual TLS")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """--api-key (default $TEACHER_API_KEY) and the TLS options: what a command-line client of a
    shared teacher needs to be let in."""
    parser.add_argument("--api-key", default=os.environ.get("TEACHER_API_KEY"),
                        help="the tenant's bearer token (default: $TEACHER_API_KEY)")
    add_tls_arguments(parser)

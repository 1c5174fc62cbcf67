"""distill-teacher info HOST:PORT [--api-key TOKEN] [--tls-ca CA.pem] [--tls-cert C --tls-key K]

Print a running teacher's Info (model, backend, vocabulary, tokenizer fingerprint, limits,
features) as JSON: the same document as its HTTP /v1/info, asked over gRPC with the worker's
credentials. Exit 0 on an answer, 2 when the teacher refuses or cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format

from distill.tls import add_client_arguments, channel_credentials
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc


def info_dict(info: pb.InfoResponse) -> dict:
    """Info as JSON-ready data: proto field names, every field shown (zeros and false too)."""
    return json_format.MessageToDict(info, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-teacher info", description=__doc__.splitlines()[2])
    parser.add_argument("address", metavar="HOST:PORT", help="the teacher's gRPC address")
    add_client_arguments(parser)
    parser.add_argument("--server-name", help="name in the server's certificate, if not the address")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        credentials = channel_credentials(args.tls, args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        parser.error(str(exc))
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    channel = (grpc.secure_channel(args.address, credentials, options) if credentials
               else grpc.insecure_channel(args.address, options))
    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else None
    try:
        with channel:
            info = pb_grpc.TeacherStub(channel).Info(pb.InfoRequest(), timeout=args.timeout,
                                                     metadata=metadata)
    except grpc.RpcError as err:
        print(f"{args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    print(json.dumps(info_dict(info), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

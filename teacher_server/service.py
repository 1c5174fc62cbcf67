"""The gRPC servicer: protos in, work items to the batcher, protos out, errors to status codes."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time

import grpc
from google.protobuf.message import DecodeError

from distill.client.routing import QUEUE_KEY
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc
from teacher_server import protocol
from teacher_server.batcher import Batcher
from teacher_server.errors import (Expired, InvalidRequest, NotSupported, Overloaded,
                                   PermissionDenied, ServiceError, Unauthenticated, Unavailable)
from teacher_server.logs import log_request
from teacher_server.metrics import Metrics
from teacher_server.tenants import Tenant, Tenants

log = logging.getLogger(__name__)

_STATUS = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotSupported: grpc.StatusCode.UNIMPLEMENTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Expired: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_REASONS = {InvalidRequest: "invalid", Unavailable: "unavailable", NotSupported: "unsupported",
            Unauthenticated: "unauthenticated", PermissionDenied: "permission_denied"}
# gRPC's standard retry hint (gRFC A6): the client's retry policy waits this many milliseconds
# before its next attempt; a negative value asks it not to retry.
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def _rejection(exc: ServiceError) -> tuple[str, tuple]:
    """(metrics reason, trailing metadata) for a refused request."""
    if isinstance(exc, Overloaded):
        hint = -1 if exc.retry_after_s is None else max(1, round(exc.retry_after_s * 1000))
        return exc.reason, ((PUSHBACK_KEY, str(hint)),)
    return _REASONS[type(exc)], ()


_SERVICE = pb.DESCRIPTOR.services_by_name["Teacher"]
_REQUEST_TYPES = {m.name: getattr(pb, m.input_type.name) for m in _SERVICE.methods}


def add_to_server(servicer: "TeacherServicer", server: grpc.aio.Server) -> None:
    """Register the Teacher rpcs taking raw bytes: the `rpc` wrapper parses them, so bytes that
    are not a valid request get INVALID_ARGUMENT (gRPC's own parsing would answer UNKNOWN)."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, name), response_serializer=lambda message: message.SerializeToString())
        for name in _REQUEST_TYPES}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)


def _parse_message(name: str, raw: bytes):
    try:
        return _REQUEST_TYPES[name].FromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(f"the request is not a valid {_REQUEST_TYPES[name].DESCRIPTOR.full_name} "
                             f"message ({exc}); send it with the distill.v1 stubs") from None


# (sequences, tokens) of the call being handled, for its request-log line: set by
# TeacherServicer._parse, read by `rpc` (each call is its own asyncio task, so its own context)
_call_size: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("call_size")


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def rpc(name: str):
    """Authenticate the caller, count the call by status code and tenant, and turn ServiceErrors
    into gRPC statuses (with a retry hint when a limit was hit)."""

    def wrap(method):
        @functools.wraps(method)
        async def handler(self: "TeacherServicer", raw: bytes, context: grpc.aio.ServicerContext):
            code, tenant = grpc.StatusCode.OK, "unknown"
            started = time.monotonic()
            _call_size.set((0, 0))
            self.in_flight += 1
            self.idle.clear()
            try:
                if self.draining:
                    raise Unavailable("the teacher is draining for shutdown; retry on another replica")
                caller = self.tenants.authenticate(context.invocation_metadata(), name)
                tenant = caller.name
                response = await method(self, _parse_message(name, raw), context, caller)
                # the queue left behind, for the clients' least-work routing across replicas
                context.set_trailing_metadata(((QUEUE_KEY, str(self.batcher.queued_tokens)),))
                return response
            except ServiceError as exc:
                code = _STATUS[type(exc)]
                reason, trailers = _rejection(exc)
                if not isinstance(exc, Expired):
                    self.metrics.rejections.labels(tenant, reason).inc()
                await context.abort(code, str(exc), trailing_metadata=trailers)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", name)
                await context.abort(code, f"internal error in {name}; see the teacher's log")
            finally:
                seconds = time.monotonic() - started
                self.metrics.requests.labels(name, code.name, tenant).inc()
                self.metrics.request_latency.labels(name, code.name).observe(seconds)
                log_request(name, tenant, code.name, seconds, *_call_size.get())
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()

        return handler

    return wrap


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, batcher: Batcher, limits: protocol.Limits, info: pb.InfoResponse,
                 metrics: Metrics, tenants: Tenants | None = None):
        self.batcher = batcher
        self.tenants = tenants or Tenants(None)
        self.limits = limits
        self.info = info
        self.metrics = metrics
        self.draining = False
        self.in_flight = 0           # unary calls being handled; drain waits for zero
        self.idle = asyncio.Event()
        self.idle.set()

    async def _serve(self, parse, request, context, tenant: Tenant) -> tuple[protocol.Parsed, list]:
        """Validate (every check is the protocol's), queue, wait for the outputs."""
        parsed = parse(request, self.limits.for_tenant(tenant))
        _call_size.set((parsed.num_sequences, parsed.num_tokens))
        return parsed, await self.batcher.submit(parsed.items, tenant, _deadline(context))

    @rpc("Score")
    async def Score(self, request: pb.ScoreRequest, context, tenant: Tenant) -> pb.ScoreResponse:
        parsed, outputs = await self._serve(protocol.parse_score_request, request, context, tenant)
        self.metrics.tokens_scored.inc(parsed.num_scored)
        return parsed.respond(outputs)

    @rpc("Verify")
    async def Verify(self, request: pb.VerifyRequest, context, tenant: Tenant) -> pb.VerifyResponse:
        parsed, outputs = await self._serve(protocol.parse_verify_request, request, context, tenant)
        self.metrics.draft_tokens.inc(sum(item.draft.numel() for item in parsed.items))
        self.metrics.accepted_tokens.inc(sum(o.num_accepted for o in outputs))
        return parsed.respond(outputs)

    @rpc("Generate")
    async def Generate(self, request: pb.GenerateRequest, context,
                       tenant: Tenant) -> pb.GenerateResponse:
        parsed, outputs = await self._serve(protocol.parse_generate_request, request, context, tenant)
        self.metrics.tokens_generated.inc(sum(s.token_ids.numel() for o in outputs[0] for s in o))
        return parsed.respond(outputs)

    @rpc("Info")
    async def Info(self, request: pb.InfoRequest, context, tenant: Tenant) -> pb.InfoResponse:
        return self.info

"""The gRPC servicer: protos in, work items to the batcher, protos out, errors to status codes."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc
from teacher_server import protocol
from teacher_server.batcher import Batcher
from teacher_server.errors import (InvalidRequest, NotSupported, Overloaded, ServiceError,
                                   Unavailable)
from teacher_server.metrics import Metrics

log = logging.getLogger(__name__)

_STATUS = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotSupported: grpc.StatusCode.UNIMPLEMENTED,
}


def rpc(name: str):
    """Count the call by status code and turn ServiceErrors into gRPC statuses."""

    def wrap(method):
        @functools.wraps(method)
        async def handler(self: "TeacherServicer", request, context: grpc.aio.ServicerContext):
            code = grpc.StatusCode.OK
            self.in_flight += 1
            self.idle.clear()
            try:
                if self.draining:
                    raise Unavailable("the teacher is draining for shutdown; retry on another replica")
                return await method(self, request, context)
            except ServiceError as exc:
                code = _STATUS[type(exc)]
                await context.abort(code, str(exc))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", name)
                await context.abort(code, f"internal error in {name}; see the teacher's log")
            finally:
                self.metrics.requests.labels(name, code.name).inc()
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()

        return handler

    return wrap


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, batcher: Batcher, limits: protocol.Limits, info: pb.InfoResponse,
                 metrics: Metrics):
        self.batcher = batcher
        self.limits = limits
        self.info = info
        self.metrics = metrics
        self.draining = False
        self.in_flight = 0           # unary calls being handled; drain waits for zero
        self.idle = asyncio.Event()
        self.idle.set()

    @rpc("Score")
    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        items = protocol.parse_score_request(request, self.limits)
        dtype = protocol.logprob_dtype(request.logprob_dtype)
        outputs = await self.batcher.submit(items)
        self.metrics.tokens_scored.inc(sum(item.num_scored for item in items))
        return pb.ScoreResponse(results=[protocol.score_result(o, dtype) for o in outputs])

    @rpc("Verify")
    async def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        if not self.info.features.verify:
            raise NotSupported(f"the {self.info.backend} backend does not serve Verify")
        items = protocol.parse_verify_request(request, self.limits)
        dtype = protocol.logprob_dtype(request.logprob_dtype)
        outputs = await self.batcher.submit(items)
        self.metrics.draft_tokens.inc(sum(item.draft.numel() for item in items))
        self.metrics.accepted_tokens.inc(sum(o.num_accepted for o in outputs))
        return protocol.verify_response(outputs, dtype)

    @rpc("Generate")
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        if not self.info.features.generate:
            raise NotSupported(f"the {self.info.backend} backend does not serve Generate")
        item = protocol.parse_generate_request(request, self.limits)
        dtype = protocol.logprob_dtype(request.logprob_dtype)
        (outputs,) = await self.batcher.submit([item])
        self.metrics.tokens_generated.inc(sum(s.token_ids.numel() for o in outputs for s in o))
        return protocol.generate_response(outputs, dtype)

    @rpc("Info")
    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        return self.info

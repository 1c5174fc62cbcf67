"""The HTTP side: liveness, readiness, Prometheus metrics and Info as JSON (FastAPI)."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from distill.client.info import info_dict
from distill.v1 import teacher_pb2 as pb
from teacher_server.metrics import Metrics


class Readiness:
    """Shared between gRPC health and HTTP: ready after warm-up, not ready while draining."""

    def __init__(self) -> None:
        self.ready = False


def create_app(readiness: Readiness, metrics: Metrics, info: pb.InfoResponse) -> FastAPI:
    app = FastAPI(title="distill teacher", docs_url=None, redoc_url=None)
    info_json = info_dict(info)

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict:
        """Readiness: warmed up, not draining, no forward pass stuck (503 otherwise)."""
        if not readiness.ready:
            response.status_code = 503
            return {"status": "not ready"}
        return {"status": "ready"}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info")
    def info_route() -> dict:
        return info_json

    return app

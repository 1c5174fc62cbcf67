"""An in-process teacher server whose forward passes wait for the test (health and drain checks),
and the server's /metrics read the way Prometheus and the Grafana dashboard read them."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import httpx
import numpy as np
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from teacher_server.backends.hf import TransformersBackend
from teacher_server.config import ServerSettings
from teacher_server.server import TeacherServer
from tests.helpers import ROOT

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
DASHBOARD = ROOT / "docker/grafana/dashboards/teacher.json"


def score_request(n_tokens=12):
    return pb.ScoreRequest(sequences=[pb.ScoreSequence(
        token_ids=pack(np.arange(n_tokens, dtype=np.int32)), score_from=1)])


class GatedBackend:
    """The real transformers backend, but each forward pass waits for the test to open a gate."""

    def __init__(self, backend):
        self.backend, self.info = backend, backend.info
        self.gate, self.entered = threading.Event(), threading.Event()

    def score(self, items):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.backend.score(items)


def gated_server_running(tiny_model_dir, reference_model, **settings):
    """An in-process server (bound, not warmed up) on its own event-loop thread, over a
    GatedBackend: yields (server, backend, run), `run` submitting a coroutine to its loop."""
    from transformers import AutoTokenizer

    backend = GatedBackend(TransformersBackend(reference_model, AutoTokenizer.from_pretrained(tiny_model_dir),
                                               str(tiny_model_dir)))
    settings = ServerSettings(model=str(tiny_model_dir), port=0, http_port=0, **settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop)
    server = run(_make(settings, backend)).result()
    run(server.bind()).result(30)
    yield server, backend, run
    backend.gate.set()
    if not server._stopped.is_set():
        run(server.stop(grace=5)).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def _make(settings, backend):
    return TeacherServer(settings, backend)


# ---- /metrics and the Grafana dashboard


def metric_families(teacher) -> dict:
    """The metric families a running server (a TeacherProcess) exposes on /metrics, by name."""
    text = httpx.get(f"{teacher.http}/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left after removing strings,
    label matchers, ranges, grouping clauses and function calls."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"[A-Za-z_][A-Za-z0-9_]*\s*\(", "(", expr)      # function names
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n.lower() not in _KEYWORDS and not re.fullmatch(r"\d.*", n)}


def exported_names(families: dict) -> set[str]:
    """Every sample name the families can expose, labelled or not yet observed included."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "info": ["_info"], "gauge": [""], "summary": ["_sum", "_count", ""]}
    return {f.name + s for f in families.values() for s in suffixes.get(f.type, [""])}


def dashboard_exprs() -> list[str]:
    """Every query of the Grafana dashboard's panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]

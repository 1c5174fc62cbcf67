"""Health transitions, drain on stop/SIGTERM, /metrics, the HTTP routes and reflection."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from distill.v1 import teacher_pb2_grpc as pb_grpc
from tests.helpers import TeacherProcess
from tests.helpers.servers import NOT_SERVING, SERVING, gated_server_running, score_request


@pytest.fixture
def gated_server(tiny_model_dir, reference_model):
    yield from gated_server_running(tiny_model_dir, reference_model)


def test_health_warm_up_serve_drain(gated_server):
    server, backend, run = gated_server
    target, http = f"127.0.0.1:{server.grpc_port}", f"http://127.0.0.1:{server.http_port}"
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    teacher = pb_grpc.TeacherStub(channel)

    # bound but not warmed up
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
    assert httpx.get(f"{http}/readyz").status_code == 503
    assert httpx.get(f"{http}/healthz").status_code == 200

    warm = run(server.warm_up())
    backend.gate.set()
    warm.result(30)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="distill.v1.Teacher"), timeout=10).status == SERVING
    assert httpx.get(f"{http}/readyz").status_code == 200

    # one request held inside the model, a health watcher open, then drain
    backend.gate.clear()
    backend.entered.clear()
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == SERVING
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(teacher.Score, score_request(), timeout=60)
        assert backend.entered.wait(30)
        stopping = run(server.stop(grace=30))
        assert next(watch).status == NOT_SERVING
        assert httpx.get(f"{http}/readyz").status_code == 503
        with pytest.raises(grpc.RpcError) as err:
            teacher.Score(score_request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        backend.gate.set()
        assert list(in_flight.result(30).results[0].topk_ids.shape) == [11, 20]  # finished, not cut
        stopping.result(60)
    channel.close()


def test_sigterm_drains_and_exits_zero(tiny_model_dir):
    server = TeacherProcess(tiny_model_dir)
    server.wait_serving()
    with grpc.insecure_channel(server.target) as channel:
        assert pb_grpc.TeacherStub(channel).Score(score_request(), timeout=30).results
    assert server.terminate() == 0
    log = server.log()
    assert "draining" in log and "stopped" in log


def _samples(http) -> dict:
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{http}/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_what_was_sent(teacher, client):
    before = _samples(teacher.http)
    client.score([list(range(10)), list(range(30))], [1, 20], top_k=3)   # 9 + 10 positions
    client.score([list(range(5))], 2)                                   # 3 positions
    with pytest.raises(grpc.RpcError):
        client.score([[1, 2, 9999]], 1)
    after = _samples(teacher.http)
    delta = lambda key: after.get(key, 0) - before.get(key, 0)
    open_ = ("tenant", "open")
    assert delta(("teacher_requests_total", (("code", "OK"), ("rpc", "Score"), open_))) == 2
    assert delta(("teacher_requests_total", (("code", "INVALID_ARGUMENT"), ("rpc", "Score"), open_))) == 1
    assert delta(("teacher_rejections_total", (("reason", "invalid"), open_))) == 1
    assert delta(("teacher_tokens_scored_total", ())) == 22
    assert delta(("teacher_tokens_forward_total", ())) == 45
    assert delta(("teacher_tenant_tokens_total", (open_,))) == 45
    assert delta(("teacher_queue_wait_seconds_count", (open_,))) == 2   # once per request
    assert delta(("teacher_forward_seconds_count", ())) >= 1


def test_http_info_and_reflection(teacher):
    info = httpx.get(f"{teacher.http}/v1/info").json()
    assert info["vocab_size"] == 512 and info["backend"] == "transformers"
    assert len(info["tokenizer_fingerprint"]) == 64

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase)

    with grpc.insecure_channel(teacher.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"distill.v1.Teacher", "grpc.health.v1.Health"} <= services
        methods = {m.name for m in db.FindFileContainingSymbol("distill.v1.Teacher").service[0].method}
        assert methods == {"Score", "Verify", "Generate", "Info"}


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may never be reaped here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_teacher_process_dies_with_the_process_that_started_it(tiny_model_dir):
    code = ("import signal; from teacher_server.process import TeacherProcess; "
            f"s = TeacherProcess({str(tiny_model_dir)!r}); print(s.proc.pid, flush=True); signal.pause()")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    assert _running(server_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while _running(server_pid):
        assert time.monotonic() < deadline, "the teacher outlived the process that started it"
        time.sleep(0.05)   # polling for the exit, not waiting for time to pass

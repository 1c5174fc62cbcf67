"""Operating the teacher: its command line, health that follows the model, JSON and request logs,
metrics, the Grafana dashboard's queries, `distill-teacher info` and `distill-score`; the vLLM
backend's refusal at start (its settings alone: tests/unit/test_ops.py; a vLLM engine's metrics:
tests/e2e/test_ops_vllm.py)."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distill.client.teacher_client import TeacherClient
from distill.v1 import teacher_pb2_grpc as pb_grpc
from student_worker.tools import score_file
from teacher_server.metrics import ENGINE_METRICS
from tests.helpers import ROOT, TeacherProcess, vllm_env
from tests.helpers.servers import (NOT_SERVING, SERVING, dashboard_exprs, exported_names,
                                   gated_server_running, metric_families, metric_names, score_request)


def _env_without_teacher_vars() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}


# ---- command line


def test_a_missing_model_is_a_usage_error_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "teacher_server", "--port", "0"], cwd=ROOT,
                          env=_env_without_teacher_vars(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--model (or TEACHER_MODEL): Field required" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_http_off_serves_grpc_only(tiny_model_dir):
    server = TeacherProcess(tiny_model_dir, "--http-port", "off")   # overrides TeacherProcess's 0
    try:
        server.wait_serving()
        assert server.http_port is None and "http off" in server.log()
        with TeacherClient(server.target) as client:
            assert client.info().model_id == str(tiny_model_dir)
    finally:
        assert server.terminate() == 0, server.log()


def test_revision_picks_the_snapshot_of_a_hub_model(tmp_path):
    """An offline hub cache holding two revisions of `test/tiny` (different context lengths):
    --revision loads the one it names, through the real hub resolution."""
    import shutil

    from scripts.tiny_model import make_tiny_model

    repo = tmp_path / "hub" / "models--test--tiny"
    for ref, commit, context in (("main", "a" * 40, 64), ("v1", "b" * 40, 48)):
        make_tiny_model(tmp_path / ref, max_position_embeddings=context)
        shutil.copytree(tmp_path / ref, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    server = TeacherProcess("test/tiny", "--revision", "v1",
                            env=dict(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub")))
    try:
        server.wait_serving()
        with TeacherClient(server.target) as client:
            assert client.info().max_context == 48
    finally:
        assert server.terminate() == 0, server.log()


# ---- health follows the model


@pytest.fixture
def watched_server(tiny_model_dir, reference_model):
    """An in-process server whose forward passes wait for the test, with a 0.5 s forward limit."""
    for server, backend, run in gated_server_running(tiny_model_dir, reference_model,
                                                     max_forward_seconds=0.5):
        backend.gate.set()
        run(server.warm_up()).result(30)
        yield server, backend


def test_a_stuck_forward_pass_turns_health_not_serving_until_it_ends(watched_server):
    server, backend = watched_server
    http = f"http://127.0.0.1:{server.http_port}"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == SERVING
        backend.gate.clear()
        backend.entered.clear()
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(pb_grpc.TeacherStub(channel).Score, score_request(), timeout=60)
            assert backend.entered.wait(30)
            assert next(watch).status == NOT_SERVING        # the pass has run over 0.5 s
            assert httpx.get(f"{http}/readyz").status_code == 503
            assert httpx.get(f"{http}/healthz").status_code == 200   # the process still answers
            backend.gate.set()
            assert next(watch).status == SERVING             # it ended: serving again
            assert len(call.result(30).results) == 1
        assert httpx.get(f"{http}/readyz").status_code == 200


# ---- logs, metrics, dashboard, tools: one server with JSON logs and the request log on


@pytest.fixture(scope="module")
def json_teacher(tiny_model_dir):
    server = TeacherProcess(tiny_model_dir, "--log-format", "json", "--log-requests",
                            "--max-top-k", "64")
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


def test_json_logs_with_one_line_per_finished_rpc(json_teacher):
    with TeacherClient(json_teacher.target, max_attempts=1) as client:
        client.score([list(range(1, 11))] * 3, 1, top_k=4)
        with pytest.raises(grpc.RpcError):
            client.score([list(range(1, 11))], 1, top_k=100)    # over --max-top-k
    json_teacher.wait_for_log('"status": "INVALID_ARGUMENT"')
    records = [json.loads(line) for line in json_teacher.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    requests = [r for r in records if r["logger"] == "teacher_server.requests"]
    ok = [r for r in requests if r["rpc"] == "Score" and r["status"] == "OK"]
    assert ok and ok[-1]["tenant"] == "open" and ok[-1]["sequences"] == 3
    assert ok[-1]["tokens"] == 30 and ok[-1]["ms"] > 0 and ok[-1]["level"] == "INFO"
    assert any(r["rpc"] == "Score" and r["status"] == "INVALID_ARGUMENT" for r in requests)


def test_metrics_latency_info_and_process(json_teacher, tiny_model_dir):
    with TeacherClient(json_teacher.target) as client:
        client.score([list(range(1, 8))], 1, top_k=4)
    families = metric_families(json_teacher)
    latency = [s for s in families["teacher_request_seconds"].samples
               if s.name.endswith("_count") and s.labels == {"rpc": "Score", "code": "OK"}]
    assert latency and latency[0].value >= 1
    [info] = families["teacher_info"].samples
    assert info.labels == {"model": str(tiny_model_dir), "backend": "transformers",
                           "dtype": "float32", "version": "0.1.0"}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
        assert families[name].samples[0].value > 0, name


def test_every_dashboard_query_reads_metrics_the_server_exports(json_teacher):
    exported = exported_names(metric_families(json_teacher))
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        for name in names:
            if name.startswith("vllm:"):   # the vLLM backend's (checked in test_ops_vllm.py)
                assert re.sub(r"_total$", "", name) in ENGINE_METRICS, expr
            else:
                assert name in exported, f"{name} in {expr!r} is not exported"


# ---- tools


def test_distill_teacher_info_prints_info_as_json(json_teacher, tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "teacher_server", "info", json_teacher.target],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["model_id"] == str(tiny_model_dir) and info["backend"] == "transformers"
    assert info == httpx.get(f"{json_teacher.http}/v1/info").json()
    done = subprocess.run([sys.executable, "-m", "teacher_server", "info", "127.0.0.1:1",
                           "--timeout", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "UNAVAILABLE" in done.stderr


def test_score_file_writes_shards_that_match_the_teacher(json_teacher, tiny_model_dir, tmp_path):
    lines = [{"token_ids": list(range(1, 6 + i)), "score_from": 1 + i % 3} for i in range(4)]
    lines += [{"text": "hello world"}, {"prompt": "2+2=", "completion": "4"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "scores"
    args = [str(source), str(out), "--teacher", json_teacher.target, "--top-k", "5",
            "--tokenizer", str(tiny_model_dir), "--shard-sequences", "4", "--batch-sequences", "3"]
    assert score_file.main(args) == 0
    shards = sorted(out.glob("shard-*.safetensors"))
    assert [p.name for p in shards] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert score_file.shard_metadata(shards[0])["model_id"] == str(tiny_model_dir)
    rows = [row for path in shards for row in score_file.read_shard(path)]
    assert [line for line, *_ in rows] == list(range(6))
    from transformers import AutoTokenizer

    expected = score_file.read_sequences(source, AutoTokenizer.from_pretrained(tiny_model_dir))
    with TeacherClient(json_teacher.target) as client:
        direct = client.score([ids for ids, _ in expected], [s for _, s in expected], top_k=5)
    for (line, ids, start, got), (want_ids, want_start), want in zip(rows, expected, direct):
        assert ids.tolist() == want_ids and start == want_start
        assert got.topk_ids.shape == (len(want_ids) - want_start, 5)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.token_logprobs, want.token_logprobs, atol=1e-5, rtol=0)
        assert torch.equal(got.topk_ids, want.topk_ids)
    # a second run keeps the shards it finds (a stopped run continues)
    before = [p.stat().st_mtime_ns for p in shards]
    assert score_file.main(args) == 0
    assert [p.stat().st_mtime_ns for p in shards] == before


@pytest.mark.vllm
def test_the_demo_teacher_is_refused_on_vllm_cpu_with_the_reason(tmp_path):
    with pytest.raises(RuntimeError) as err:
        TeacherProcess(ROOT / "examples/demo-teacher", "--backend", "vllm", env=vllm_env(tmp_path),
                       start_timeout=300)
    log = str(err.value)
    assert "cannot start: this model's attention heads have 16 dimensions" in log, log
    assert "Traceback" not in log

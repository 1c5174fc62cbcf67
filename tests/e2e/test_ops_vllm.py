"""Operating the vLLM backend: the dtype the engine really runs in Info, and the engine's own metrics
on /metrics (what the Grafana dashboard's vLLM panels read). --vllm-arg's parsing and the CPU
head-size refusal: tests/unit/test_ops.py, tests/integration/test_ops.py."""

import json
import re

import pytest

from distill.client.teacher_client import TeacherClient
from scripts.tiny_model import make_tiny_model
from teacher_server.metrics import ENGINE_METRICS
from tests.helpers import TeacherProcess, vllm_env
from tests.helpers.servers import dashboard_exprs, exported_names, metric_families, metric_names

pytestmark = pytest.mark.vllm


# a bfloat16 engine on a CPU: minutes on 2 shared cores
def test_vllm_reports_the_dtype_it_runs_and_its_engine_metrics(tmp_path):
    model = make_tiny_model(tmp_path / "tiny-vllm", preset="tiny-vllm")   # a float32 checkpoint
    server = TeacherProcess(model, "--backend", "vllm", "--vllm-enforce-eager", "--max-top-k", "8",
                            "--vllm-arg", "max_num_seqs=4", "--log-format", "json",
                            env=vllm_env(tmp_path / "cache"), start_timeout=400)
    try:
        server.wait_serving(timeout=300)
        with TeacherClient(server.target, timeout=120) as client:
            info = client.info()
            assert info.model_dtype == "bfloat16"     # vLLM's "auto" on a CPU, not the file's
            client.score([list(range(1, 20))] * 2, 1, top_k=4)
        assert "max_num_seqs=4" in server.log()
        families = metric_families(server)
        assert families["teacher_info"].samples[0].labels["dtype"] == "bfloat16"
        for name in ENGINE_METRICS:
            assert name in families, name
        assert families["vllm:prompt_tokens"].samples[0].value >= 38
        exported = exported_names(families)
        vllm_names = {n for expr in dashboard_exprs() for n in metric_names(expr) if n.startswith("vllm:")}
        assert vllm_names and vllm_names <= exported
        for line in server.log().splitlines():
            # vLLM's own log lines are JSON too; torch's C++ warnings ("[W1130 ...") are written
            # by native code straight to stderr, past Python's logging
            if line.strip() and not re.match(r"\[[WE]\d{4} ", line):
                json.loads(line)
    finally:
        assert server.terminate() == 0, server.log()

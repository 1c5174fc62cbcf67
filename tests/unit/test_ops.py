"""Operating the teacher without a server: its settings from flags and the environment, the
dashboard's PromQL reader, and --vllm-arg typed by vLLM's own parser (with servers:
tests/integration/test_ops.py)."""

import os
import re

import pytest

from teacher_server.config import HTTP_OFF, ServerSettings, parse_settings
from tests.helpers.servers import metric_names


def test_bad_values_name_their_flag_and_variable(capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("TEACHER_")]:
        monkeypatch.delenv(key)
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--model", "m", "--http-port", "70000"])
    assert exit_.value.code == 2
    assert "--http-port (or TEACHER_HTTP_PORT): Input should be less than or equal to 65535" in \
        capsys.readouterr().err


def test_help_names_every_flags_environment_variable(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--help"])
    assert exit_.value.code == 0
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"[env: TEACHER_{name.upper()}]" in help_text, name


def test_http_port_zero_picks_a_port_and_off_turns_it_off(monkeypatch):
    for key in [k for k in os.environ if k.startswith("TEACHER_")]:
        monkeypatch.delenv(key)
    port = lambda *args: parse_settings(["--model", "m", *args]).http_port
    assert port() == 8080 and port("--http-port", "0") == 0
    assert port("--http-port", "off") == port("--http-port", "-1") == HTTP_OFF
    monkeypatch.setenv("TEACHER_HTTP_PORT", "OFF")
    assert port() == HTTP_OFF
    assert port("--http-port", "9000") == 9000     # the flag wins


def test_metric_names_parser():
    assert metric_names('histogram_quantile(0.95, sum by (le, rpc) (rate(a_bucket{code="OK"}[5m])))') == {"a_bucket"}
    assert metric_names("sum(rate(x_total[$__rate_interval])) / max(vllm:y)") == {"x_total", "vllm:y"}


@pytest.mark.vllm
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

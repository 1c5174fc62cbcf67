"""Prompt lengths against the teacher's context (the tiny teacher's is 256 tokens): prompts that
leave no room are left out and counted, and completions are capped so that prompt + completion
always fit, for the student's samples and the teacher's (Generate would refuse them)."""

import json

import pytest

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.data.prompts import PromptData
from student_worker.train.trainer import setup, train

SHORT = [{"prompt": "rev abc="}, {"prompt": "rev xy="}]
NEAR_FULL = {"prompt": "x" * 250 + "="}      # 251 tokens (+ BOS): room for 4 new tokens
TOO_LONG = {"prompt": "y" * 300}


@pytest.fixture(scope="module")
def student_dir_small(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "student", seed=1, hidden_size=32,
                           intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)


@pytest.mark.parametrize("preset", ["gkd", "seqkd"])
def test_completions_fit_the_teachers_context(preset, teacher, student_dir_small, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in [*SHORT, NEAR_FULL, TOO_LONG]))
    cfg = load_config(None, preset, [
        f"student.path={student_dir_small}", f"teacher.target={teacher.target}", f"data.source={data}",
        "data.batch_size=3", "sampling.max_new_tokens=16", "teacher.top_k=8", "train.steps=2",
        "train.eval_every=0"])
    run = setup(cfg, tmp_path / "probe")
    assert run.data.filtered == 1 and len(run.data.examples) == 3
    assert run.ctx.new_tokens(run.data.examples[0].prompt_ids) == 16
    near = next(e for e in run.data.examples if len(e.prompt_ids) > 200)
    assert len(near.prompt_ids) + run.ctx.new_tokens(near.prompt_ids) == run.info.max_context
    run.teacher.client.close()
    train(cfg, tmp_path / "run", progress=False)   # the teacher would refuse an over-long request
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2


def test_prompt_filter_counts(tmp_path, student_dir_small):
    from transformers import AutoTokenizer

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in [*SHORT, TOO_LONG]))
    cfg = load_config(None, "gkd", [f"student.path={student_dir_small}", "teacher.target=x:1",
                                    f"data.source={data}", "data.max_prompt_tokens=100"])
    examples = PromptData(cfg.data, AutoTokenizer.from_pretrained(student_dir_small))
    assert examples.filtered == 1 and len(examples.examples) == 2


def test_student_dtype_and_hub_options():
    import torch

    from student_worker.train.parallel import precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # mixed precision by default: float32 weights for AdamW, bf16 compute on a GPU
    assert precision("auto", "auto", lora=False, device=cpu) == (torch.float32, None)
    assert precision("auto", "auto", lora=False, device=gpu) == (torch.float32, torch.bfloat16)
    assert precision("auto", "auto", lora=True, device=gpu) == (torch.bfloat16, torch.bfloat16)   # frozen base
    assert precision("bfloat16", "none", lora=False, device=cpu) == (torch.bfloat16, None)   # asked for
    assert precision("float32", "bfloat16", lora=False, device=cpu) == (torch.float32, torch.bfloat16)
    cfg = load_config(None, "gkd", ["student.path=m", "teacher.target=x:1", "data.source=reverse",
                                    "student.revision=abc123", "student.trust_remote_code=true"])
    assert cfg.student.dtype == "auto" and cfg.student.revision == "abc123" and cfg.student.trust_remote_code

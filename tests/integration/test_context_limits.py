"""Prompt lengths against the teacher's context (the tiny teacher's is 256 tokens): prompts that
leave no room are left out and counted, and completions are capped so that prompt + completion
always fit, for the student's samples and the teacher's (Generate would refuse them)."""

import json

import pytest

from student_worker.config import load_config
from student_worker.train.trainer import setup, train

SHORT = [{"prompt": "rev abc="}, {"prompt": "rev xy="}]
NEAR_FULL = {"prompt": "x" * 250 + "="}      # 251 tokens (+ BOS): room for 4 new tokens
TOO_LONG = {"prompt": "y" * 300}


@pytest.mark.parametrize("preset", ["gkd", "seqkd"])
def test_completions_fit_the_teachers_context(preset, teacher, student_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in [*SHORT, NEAR_FULL, TOO_LONG]))
    cfg = load_config(None, preset, [
        f"student.path={student_dir}", f"teacher.target={teacher.target}", f"data.source={data}",
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

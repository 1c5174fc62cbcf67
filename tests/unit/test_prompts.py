"""The prompts each rank trains on, and the prompt-length filter (with the teacher's context:
tests/integration/test_context_limits.py)."""

import json

from transformers import AutoTokenizer

from student_worker.config import load_config
from student_worker.data.prompts import PromptData

SHORT = [{"prompt": "rev abc="}, {"prompt": "rev xy="}]
TOO_LONG = {"prompt": "y" * 300}


def test_ranks_get_different_prompts(student_dir):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    cfg = load_config(None, None, ["student.path=x", "teacher.target=y", "data.source=reverse",
                                   "data.batch_size=3", "data.num_examples=50"]).data
    r0, r1 = PromptData(cfg, tokenizer, 0, 2), PromptData(cfg, tokenizer, 1, 2)
    for step in range(20):  # crosses epochs
        p0 = [e.prompt for e in r0.batch(step)]
        p1 = [e.prompt for e in r1.batch(step)]
        assert p0 != p1
        assert p0 == [e.prompt for e in PromptData(cfg, tokenizer, 0, 2).batch(step)]


def test_prompt_filter_counts(tmp_path, student_dir):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in [*SHORT, TOO_LONG]))
    cfg = load_config(None, "gkd", [f"student.path={student_dir}", "teacher.target=x:1",
                                    f"data.source={data}", "data.max_prompt_tokens=100"])
    examples = PromptData(cfg.data, AutoTokenizer.from_pretrained(student_dir))
    assert examples.filtered == 1 and len(examples.examples) == 2

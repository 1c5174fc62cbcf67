"""The demo's task (digsum: the checker, its splits, its tokenizer) and its shipped teachers' accuracy
(`make demo` itself: tests/e2e/test_demo.py)."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker.tasks import TASKS
from student_worker.tasks.digsum import tokenizer as digsum_tokenizer
from student_worker.train.evaluate import evaluate
from tests.helpers import ROOT

TEACHER = ROOT / "examples" / "demo-teacher"
task = TASKS["digsum"]


@pytest.mark.parametrize("prompt,answer,ok", [
    ("37=", "90716347", True), ("0=", "00000000", True), ("72=", "99999999", True),
    ("37=", "90716348", False),          # sums to 38
    ("37=", "9071634", False),           # 7 digits
    ("37=", "907163470", False),         # 9 digits
    ("37=", "9071634a", False), ("37=", "", False), ("=", "00000000", False),
])
def test_check(prompt, answer, ok):
    assert task.check(prompt, answer) == float(ok)


def test_splits_are_distinct_and_reproducible():
    train, dev, test = (task.examples(s, 3000) for s in ("train", "dev", "test"))
    answers = [{e["completion"] for e in split} for split in (train, dev, test)]
    assert not (answers[0] & answers[1]) and not (answers[0] & answers[2]) and not (answers[1] & answers[2])
    assert task.examples("test", 50) == test[:50]
    assert all(task.check(e["prompt"], e["completion"]) == 1.0 for e in train[:500])


def test_tokenizer_round_trip(tmp_path):
    digsum_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = loaded("37=90716347").input_ids
    assert len(ids) == 11 and loaded.decode(ids) == "37=90716347"


@pytest.mark.parametrize("folder", [TEACHER, ROOT / "examples" / "ringwalk-teacher"], ids=["digsum", "ringwalk"])
def test_shipped_teacher_reaches_its_stated_accuracy(folder):
    """examples/train_demo_teacher.py's teachers: near perfect on their task's test split."""
    stated = json.loads((folder / "accuracy.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    acc = evaluate(model, AutoTokenizer.from_pretrained(folder), TASKS[stated["task"]], stated["split"],
                   num_prompts=stated["prompts"], max_new_tokens=stated.get("max_new_tokens", 10))
    assert acc.greedy >= stated["greedy"] - 0.01 and acc.sampled >= stated["sampled"] - 0.02
    assert stated["greedy"] >= 0.95 and stated["sampled"] >= 0.85
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 1024 * 1024


def test_one_answer_digsum_keeps_one_reference_per_sum_and_digsum_held_out_splits():
    one = TASKS["digsum-one-answer"]
    train = one.examples("train", 3000)
    by_prompt = {}
    for e in train:
        assert by_prompt.setdefault(e["prompt"], e["completion"]) == e["completion"]
        assert one.check(e["prompt"], e["completion"]) == 1.0
    assert [e["prompt"] for e in train] == [e["prompt"] for e in task.examples("train", 3000)]
    assert one.examples("test", 100) == task.examples("test", 100) and one.examples("dev", 10) == task.examples("dev", 10)

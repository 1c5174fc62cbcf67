"""The demo's task, its shipped teacher, and `make demo QUICK=1` end to end."""

import json
import pathlib
import subprocess

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker.train.evaluate import evaluate
from student_worker.tasks import TASKS
from student_worker.tasks.digsum import tokenizer as digsum_tokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
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


def test_shipped_teacher_reaches_its_stated_accuracy():
    stated = json.loads((TEACHER / "accuracy.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(TEACHER)
    acc = evaluate(model, AutoTokenizer.from_pretrained(TEACHER), task, stated["split"],
                   num_prompts=stated["prompts"], max_new_tokens=10)
    assert acc.greedy >= stated["greedy"] - 0.01 and acc.sampled >= stated["sampled"] - 0.02
    assert stated["greedy"] >= 0.95 and stated["sampled"] >= 0.85
    assert sum(p.stat().st_size for p in TEACHER.iterdir()) < 5 * 1024 * 1024


def test_make_demo_quick(tmp_path):
    done = subprocess.run(["make", "demo", "QUICK=1", f"OUT={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"task", "teacher", "initial", "methods"} <= results.keys()
    assert {"sft", "seqkd", "kd", "kd_jsd", "gkd"} <= results["methods"].keys()
    assert results["test_prompts"] >= 2100          # one accuracy's standard error <= 1 point
    for m in results["methods"].values():
        assert {"greedy", "sampled", "diversity", "teacher_tokens", "wall_seconds", "sampled_interval"} <= m.keys()
        assert len(m["sampled"]) == len(results["initial"]["sampled"]) == 1
        assert len(m["sampled_correct"][0]) == results["test_prompts"]
        i = m["sampled_interval"]
        assert i["low"] <= m["sampled"][0] == i["mean"] <= i["high"]
    names = ["initial", *results["methods"]]   # every method against every baseline listed before it
    assert len(results["comparisons"]) == len(names) * (len(names) - 1) // 2
    assert {"on_policy", "off_policy", "mean", "low", "high", "on_policy_wins", "text"} <= results["headline"].keys()
    assert results["methods"]["gkd"]["sampled"][0] > results["initial"]["sampled"][0]
    assert results["methods"]["sft"]["teacher_tokens"] == 0 < results["methods"]["gkd"]["teacher_tokens"]
    table = (tmp_path / "results.md").read_text()
    assert "| gkd |" in table and "95% CI" in table and "**Headline**" in table
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_config_with_torchrun(tmp_path):
    """examples/quickstart.yaml as the README runs it (two workers), only shorter."""
    import os
    import sys

    from teacher_server.process import TeacherProcess

    server = TeacherProcess(TEACHER)
    try:
        server.wait_serving()
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "student_worker", "--config", "examples/quickstart.yaml", "--output-dir", str(tmp_path),
             "train.steps=4", "train.eval_every=2", "train.eval_prompts=16", "train.eval_acceptance_prompts=4"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "TEACHER_ADDRESS": server.target, "OMP_NUM_THREADS": "1"})
    finally:
        server.terminate()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3, 4]
    assert lines[-1]["samples"] == 128 and "dev_acceptance" in lines[-1]


def test_one_answer_digsum_keeps_one_reference_per_sum_and_digsum_held_out_splits():
    one = TASKS["digsum-one-answer"]
    train = one.examples("train", 3000)
    by_prompt = {}
    for e in train:
        assert by_prompt.setdefault(e["prompt"], e["completion"]) == e["completion"]
        assert one.check(e["prompt"], e["completion"]) == 1.0
    assert [e["prompt"] for e in train] == [e["prompt"] for e in task.examples("train", 3000)]
    assert one.examples("test", 100) == task.examples("test", 100) and one.examples("dev", 10) == task.examples("dev", 10)

"""`make demo QUICK=1` end to end, and examples/quickstart.yaml under torchrun as the README runs it
(the demo's task and teacher: tests/unit/test_demo.py)."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, TeacherProcess

TEACHER = ROOT / "examples" / "demo-teacher"


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
    # the offline rows: trained with no teacher from the caches the demo built once
    assert {m: results["methods"][m]["teacher_tokens"] for m in ("seqkd_cached", "kd_cached")} == \
        {"seqkd_cached": 0, "kd_cached": 0}
    assert results["methods"]["kd_cached"]["sampled"][0] > results["initial"]["sampled"][0]
    assert sorted(p.name for p in tmp_path.glob("cache-*")) == ["cache-digsum-7680-generated",
                                                                 "cache-digsum-7680-scored"]
    table = (tmp_path / "results.md").read_text()
    assert "| gkd |" in table and "95% CI" in table and "**Headline**" in table
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the intervals resample digsum's 53 distinct test prompts; an earlier run's results.json
    # makes the same tables again without training
    assert results["distinct_test_prompts"] == 53
    again = subprocess.run([sys.executable, "-m", "examples.demo", "--from-results", str(tmp_path / "results.json"),
                            "--out", str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "results.md").read_text() == table


def test_quickstart_config_with_torchrun(tmp_path):
    """examples/quickstart.yaml as the README runs it (two workers), only shorter."""
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

"""The GPU checks run end to end on the CPU with tiny models."""

import json
import os
import re
import subprocess
import sys


def test_teacher_throughput_runs_on_the_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu.teacher_throughput", "--preset", "tiny", "--device", "cpu",
         "--clients", "2", "--batch-tokens", "256", "--seq-len", "128", "--seconds", "2"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rate = float(re.search(r"scored tokens/s: ([\d,]+)", out.stdout)[1].replace(",", ""))
    fraction = float(re.search(r"fraction of the ceiling .*?: ([\d.]+)%", out.stdout)[1])
    assert rate > 0 and 0 < fraction < 100, out.stdout
    assert "2 clients x 2 x 128 tokens, k = 64" in out.stdout


def test_student_scale_check_runs_on_two_cpu_ranks():
    """The lead's GPU check, on two gloo ranks: FSDP2 = DDP, synced sampling, LoRA + checkpointing."""
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "bench/gpu/student_scale_check.py", "--device", "cpu", "--vocab", "4096"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ALL PASS" in out.stdout and "sampling from the FSDP2 model" in out.stdout, out.stdout


def test_acceptance_runs_on_the_cpu(tmp_path):
    """The GPU acceptance script's phases, small: every row present, every phase trains."""
    from bench.gpu.acceptance import PHASE_NAMES, RATIO_ROW, REUSE_ROW

    out = subprocess.run([sys.executable, "bench/gpu/acceptance.py", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.rstrip().endswith("ALL PASS"), out.stdout
    rows = json.loads((tmp_path / "acceptance.json").read_text())["rows"]
    assert [r["phase"] for r in rows[1:]] == [REUSE_ROW, *PHASE_NAMES] and rows[0]["phase"].startswith(RATIO_ROW)
    assert all(r["result"] == "PASS" for r in rows[1:]), rows
    assert rows[0]["result"] == "n/a" and "goal <= 1.10" in rows[0]["reason"]   # judged on a GPU only
    for name in PHASE_NAMES:
        assert f"| {name} | n/a | n/a |" in out.stdout   # on a CPU: no GPU memory to report

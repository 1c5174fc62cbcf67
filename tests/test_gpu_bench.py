"""The GPU throughput check runs end to end on the CPU with a tiny model."""

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

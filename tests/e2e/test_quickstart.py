"""examples/quickstart.sh: the README's first run, its teacher stopped when the workers finish or
on Ctrl-C. A short run (overrides passed through) of one worker on the shipped demo models."""

import os
import signal
import subprocess
import sys

import grpc
import pytest

from tests.helpers import ROOT, free_port

SHORT = ["train.steps=2", "train.eval_every=0", "data.batch_size=4", "student.num_threads=1"]


def _nobody_listens(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=2)
        except grpc.FutureTimeoutError:
            return True
    return False


def _quickstart(tmp_path, port: int, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "1", "OUT": str(tmp_path / "run"),
           "TEACHER_PORT": str(port), "TEACHER_HTTP_PORT": "off", "OMP_NUM_THREADS": "1"}
    # its own process group: Ctrl-C in a terminal signals the whole foreground group
    return subprocess.Popen([str(ROOT / "examples" / "quickstart.sh"), *SHORT, *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_the_teacher_stops_when_the_workers_finish(tmp_path):
    port = free_port()
    script = _quickstart(tmp_path, port)
    output, _ = script.communicate(timeout=600)
    assert script.returncode == 0, output
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").exists()
    assert _nobody_listens(port), output


def test_the_teacher_stops_on_ctrl_c(tmp_path):
    port = free_port()
    # a run long enough to be interrupted; the teacher is up once the worker's log shows steps
    script = _quickstart(tmp_path, port, "train.steps=100000")
    try:
        for line in script.stdout:
            if (tmp_path / "run" / "metrics.jsonl").exists():
                break
        else:
            pytest.fail("the quickstart ended before training")
        os.killpg(script.pid, signal.SIGINT)
        output, _ = script.communicate(timeout=120)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
    assert script.returncode != 0
    assert _nobody_listens(port), output

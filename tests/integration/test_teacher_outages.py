"""The worker's process when its teacher goes away: killed and restarted mid-run the run continues;
gone past teacher.patience_s the worker stops with a checkpoint to resume from."""

import json
import subprocess
import sys

from tests.helpers import TeacherProcess, free_port, worker_cmd


def test_teacher_killed_and_restarted_mid_run(tiny_model_dir, student_dir, data_file, tmp_path):
    port = free_port()
    server = TeacherProcess(tiny_model_dir, "--port", str(port))
    server.wait_serving()
    worker = subprocess.Popen(
        [sys.executable, "-m", *worker_cmd(student_dir, f"127.0.0.1:{port}", data_file, tmp_path,
                                            "train.steps=12", "teacher.patience_s=300")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    output = []
    try:
        for line in worker.stdout:  # the bar writes step by step; kill once a few steps are done
            output.append(line)
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
        server.proc.kill()
        server.proc.wait()
        for line in worker.stdout:
            output.append(line)
            if "unreachable" in line:
                break
        restarted = TeacherProcess(tiny_model_dir, "--port", str(port))
        assert worker.wait(300) == 0, "".join(output) + worker.stdout.read()
        assert restarted.terminate() == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        server.proc.kill()
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert any("unreachable" in line for line in output)


def test_teacher_gone_past_patience_stops_with_a_checkpoint(tiny_model_dir, student_dir, data_file, tmp_path):
    server = TeacherProcess(tiny_model_dir)
    server.wait_serving()
    worker = subprocess.Popen(
        [sys.executable, "-m", *worker_cmd(student_dir, server.target, data_file, tmp_path,
                                            "train.steps=500", "teacher.patience_s=2")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    output = []
    try:
        for line in worker.stdout:
            output.append(line)
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
        server.proc.kill()
        output.append(worker.stdout.read())
        code = worker.wait(120)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = "".join(output)
    assert code != 0, text
    assert "stopping: the teacher at" in text and "continue with --resume" in text
    done = len(metrics.read_text().splitlines())
    state = json.loads((tmp_path / "checkpoints" / f"step-{done:06d}" / "trainer_state.json").read_text())
    assert state["step"] == done >= 2

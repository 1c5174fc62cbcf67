"""What a run leaves and refuses: config.yaml and teacher_info.json, the refusals that protect a run
folder, checkpoint rotation and state format, experiment trackers, JSON logs. Real short worker runs
(tiny models) against the session's teacher server."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.train.trainer import train
from tests.helpers import free_port


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "student", seed=1, hidden_size=32,
                           intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)


def config(student, *overrides, preset="gkd"):
    return load_config(None, preset, [f"student.path={student}", "data.source=reverse", "data.batch_size=2",
                                      "sampling.max_new_tokens=4", *overrides])


def metric_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_records_itself_and_its_folder_is_protected(teacher, client, student, tmp_path):
    out = tmp_path / "run"
    cfg = config(student, f"teacher.target={teacher.target}", "train.steps=3", "train.save_every=1",
                 "train.keep_last=2")
    train(cfg, out)
    assert load_config(out / "config.yaml") == cfg
    info = json.loads((out / "teacher_info.json").read_text())
    assert info["tokenizer_fingerprint"] == client.info().tokenizer_fingerprint

    # rotation: the newest two checkpoints stay; the state is JSON plus a tensors-only file
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3
    tensors = torch.load(out / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=True)
    assert set(tensors) == {"optimizer", "rng_torch"}   # no CUDA here: no CUDA RNG states

    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit, match="holds a run with checkpoints \\(latest: step-000003\\); --resume"):
        train(cfg, out)
    changed = config(student, f"teacher.target={teacher.target}", "train.steps=4", "train.save_every=1",
                     "train.keep_last=2", "optim.lr=0.5")
    with pytest.raises(SystemExit) as refused:
        train(changed, out, resume=True)
    assert "optim.lr: 0.0001 -> 0.5" in str(refused.value) and "train.steps: 3 -> 4" in str(refused.value)
    assert "--allow-config-change" in str(refused.value)
    assert (out / "metrics.jsonl").read_text() == metrics   # refusals touch nothing

    train(changed, out, resume=True, allow_config_change=True)
    assert metric_steps(out) == [1, 2, 3, 4]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.5


def test_report_to_tensorboard_wandb_and_mlflow(student, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "tracked"
    train(config(student, "train.steps=2", "train.report_to=tensorboard,wandb,mlflow", preset="sft"), out)
    assert not (out / "teacher_info.json").exists()   # sft ran without a teacher

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]

    wandb_runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and b"loss" in wandb_runs[0].read_bytes()

    mlflow = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [run] = mlflow.search_runs([mlflow.get_experiment_by_name("distill").experiment_id])
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.data.params["method.name"] == "sft"


def test_worker_logs_json_lines(student, tmp_path):
    port = free_port()   # nobody listens there: the worker logs its retries
    done = subprocess.run(
        [sys.executable, "-m", "student_worker", "--preset", "gkd", "--output-dir", str(tmp_path / "out"),
         "--log-format", "json", f"student.path={student}", "data.source=reverse",
         f"teacher.target=127.0.0.1:{port}", "teacher.patience_s=2", "teacher.timeout_s=0.5"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "cannot start: the teacher at" in done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    retries = [r for r in records if r["logger"] == "distill.client.teacher"]
    assert retries and all(r["level"] == "WARNING" and "retrying in" in r["message"] for r in retries)
    assert retries[0]["target"] == f"127.0.0.1:{port}" and "retry_in_s" in retries[0] and "time" in retries[0]
    assert "it/s" not in done.stderr   # no progress bars (the student's loading) between the lines

"""Named teachers (issue 29), for real on 127.0.0.1: two teacher servers, the shipped digsum and
ringwalk teachers, and one student job on a data set that mixes their tasks, each record naming
its teacher. Each sequence must be scored by its own teacher (every server's own count of the
positions it scored equals the job's count for that teacher), with every kind of completion source, and
the student must come closer to both teachers."""

from __future__ import annotations

import json
import pathlib
import random
import statistics

import httpx
import torch
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.train_demo_teacher import STUDENT, write_config_folder
from student_worker.config import load_config
from student_worker.tasks import TASKS
from student_worker.train.trainer import train
from tests.helpers import TeacherProcess

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEACHERS = {"digsum": ROOT / "examples" / "demo-teacher", "ringwalk": ROOT / "examples" / "ringwalk-teacher"}


@pytest.fixture(scope="module")
def servers():
    started = {name: TeacherProcess(folder, "--max-wait-ms", "1") for name, folder in TEACHERS.items()}
    try:
        for server in started.values():
            server.wait_serving()
        yield started
    finally:
        for server in started.values():
            assert server.terminate() == 0, server.log()


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> pathlib.Path:
    """Both tasks' training examples, shuffled, each naming the teacher that knows its task."""
    records = [{**example, "teacher": name} for name in TEACHERS for example in TASKS[name].examples("train", 64)]
    random.Random(0).shuffle(records)
    path = tmp_path_factory.mktemp("data") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def counted(server: TeacherProcess, metric: str = "teacher_tokens_scored") -> float:
    """A counter of the server's /metrics, summed over its labels."""
    families = text_string_to_metric_families(httpx.get(f"{server.http}/metrics", timeout=10).text)
    return sum(s.value for f in families if f.name == metric for s in f.samples if s.name == f"{metric}_total")


def job(servers, data: pathlib.Path, out: pathlib.Path, preset: str, steps: int, *extra: str) -> list[dict]:
    student = write_config_folder(out / "student-config", 64, **STUDENT)
    teachers = {name: {"target": server.target, "top_k": 15} for name, server in servers.items()}
    cfg = load_config(None, preset, [
        f"teachers={json.dumps(teachers)}", f"data.source={data}", "data.batch_size=8",
        f"student.path={student}", "student.init=config", "student.num_threads=1", "sampling.max_new_tokens=48",
        f"train.steps={steps}", "train.eval_acceptance_prompts=0", *extra])
    train(cfg, out / "run", progress=False)
    return [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["kd", "gkd", "seqkd", "skd"])
def test_every_sequence_is_scored_by_its_own_teacher(servers, mixed_data, tmp_path, preset):
    # seqkd's completions are the teacher's samples (Generate, no Score); skd's targets come
    # from Verify (its drafts are counted, and its corrections make the completion longer)
    metric = {"seqkd": "teacher_tokens_generated", "skd": "teacher_draft_tokens"}.get(preset, "teacher_tokens_scored")
    before = {name: counted(server, metric) for name, server in servers.items()}
    extra = ["method.draft_tokens=4", "method.skd_top_k=4"] if preset == "skd" else []
    lines = job(servers, mixed_data, tmp_path, preset, 3, *extra)
    for name, server in servers.items():
        tokens = sum(line.get(f"teacher_tokens.{name}", 0) for line in lines)
        assert tokens > 0, f"no {name} records in 3 batches of 8"
        if preset == "skd":
            assert counted(server, metric) - before[name] > 0, name
        else:
            assert counted(server, metric) - before[name] == tokens, name
        if preset in ("kd", "gkd"):   # one Score call per teacher and step, timed on its own
            assert all(f"teacher_latency_s.{name}" in line for line in lines if f"teacher_tokens.{name}" in line)


def test_the_student_comes_closer_to_both_teachers(servers, mixed_data, tmp_path):
    lines = job(servers, mixed_data, tmp_path, "kd", 40, "optim.lr=3e-3", "train.lag=1")
    for name in TEACHERS:
        kl = [line[f"kl_estimate.{name}"] for line in lines if f"kl_estimate.{name}" in line]
        assert statistics.mean(kl[-5:]) < 0.5 * statistics.mean(kl[:5]), (name, kl)


def test_a_record_without_a_known_teacher_is_refused_at_start(servers, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "12=", "completion": "3", "teacher": "math"}) + "\n")
    with pytest.raises(SystemExit, match=r"names teacher 'math'.*one of \['digsum', 'ringwalk'\]"):
        job(servers, data, tmp_path, "kd", 1)


def test_teacher_temperature_is_the_temperature_of_the_targets(teacher, student_dir, data_file, tmp_path):
    """teacher.temperature reaches Score: the batch's targets are the server's answer at that
    temperature; a method whose targets do not come from Score refuses it at start."""
    from distill.client.teacher_client import TeacherClient
    from student_worker.train.trainer import rollouts, setup

    options = [f"student.path={student_dir}", f"teacher.target={teacher.target}", f"data.source={data_file}",
               "data.batch_size=2", "teacher.top_k=8", "teacher.temperature=0.5", "train.steps=1"]
    run = setup(load_config(None, "kd", options), tmp_path / "kd")
    rollout, scores, _ = next(rollouts(run))
    with TeacherClient(teacher.target) as client:
        sharp, plain = (client.score_packed(rollout.sequences, rollout.prompt_lens, top_k=8, temperature=t)
                        for t in (0.5, 1.0))
    assert torch.equal(scores.topk_logprobs, sharp.topk_logprobs)
    assert not torch.allclose(scores.topk_logprobs, plain.topk_logprobs)
    for preset in ("seqkd", "skd"):
        with pytest.raises(SystemExit, match=f"teacher.temperature.*method '{preset}'"):
            setup(load_config(None, preset, options), tmp_path / preset)

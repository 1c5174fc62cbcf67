"""The student worker end to end against a real teacher server on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.losses import divergences as D
from student_worker.config import load_config
from student_worker.data.prompts import PromptData
from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

EXAMPLES = [{"prompt": "rev abc=", "completion": "cba"}, {"prompt": "rev hello=", "completion": "olleh"},
            {"prompt": "rev xy=", "completion": "yx"}, {"prompt": "rev pqrs=", "completion": "srqp"}]


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "student", seed=1, hidden_size=32,
                           intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "fixed.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return path


def config(student_dir, target, data_file, *overrides, preset=None):
    return load_config(None, preset, [
        f"student.path={student_dir}", f"teacher.target={target}", f"data.source={data_file}",
        "data.batch_size=4", "sampling.max_new_tokens=6", "teacher.top_k=16", "optim.lr=3e-3",
        "train.steps=8", *overrides])


def fixed_eval(cfg, model_dir, client, metric):
    """A method's measure on the fixed batch: the data completions scored by the teacher."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = PromptData(cfg.data, tokenizer).examples
    rollout = Rollout([e.prompt_ids for e in examples], [e.completion_ids for e in examples], "data")
    return measure(rollout, model_dir, client, metric)


def measure(rollout, model_dir, client, metric):
    """`metric` ("nll" or a divergence to the teacher) of the model on the rollout's completions."""
    batch = token_batch(rollout, AutoTokenizer.from_pretrained(model_dir).pad_token_id)
    scores = client.score(rollout.sequences, rollout.prompt_lens, top_k=16)
    teacher = teacher_batch(scores, rollout, batch.targets_BS.shape[1])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1], -1)
    if metric == "nll":
        values = -logprobs.gather(-1, batch.targets_BS[..., None])[..., 0]
    else:
        values = D.divergence(metric, logprobs, teacher_topk_ids_BTK=teacher.topk_ids_BSK,
                              teacher_topk_logprobs_BTK=teacher.topk_logprobs_BSK,
                              teacher_tail_logprobs_BT=teacher.tail_logprobs_BS)
    return D.masked_mean(values, batch.mask_BS).item()


@pytest.mark.parametrize("preset,overrides,metric", [
    ("sft", [], "nll"),
    ("kd", [], "forward_kl"),
    ("kd", ["teacher.top_k=512"], "forward_kl"),   # k = vocabulary: the tail is -inf everywhere
    ("gkd", ["method.student_fraction=0.5"], "jsd"),
    ("onpolicy-rkl", [], "reverse_kl"),
    ("rl-teacher-kl", [], "reverse_kl"),
    ("skd", [], "forward_kl"),
])
def test_method_reduces_its_loss(preset, overrides, metric, teacher, client, student_dir, data_file, tmp_path):
    cfg = config(student_dir, teacher.target, data_file, *overrides, preset=preset)
    before = fixed_eval(cfg, student_dir, client, metric)
    final = train(cfg, tmp_path)
    after = fixed_eval(cfg, final, client, metric)
    assert after < before, f"{preset}: {metric} went from {before:.4f} to {after:.4f}"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert all(x["samples"] == 4 and x["completion_tokens"] > 0 for x in lines)


def test_seqkd_learns_the_teachers_greedy_samples(teacher, client, student_dir, data_file, tmp_path):
    cfg = config(student_dir, teacher.target, data_file, "sampling.temperature=0", preset="seqkd")
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    examples = PromptData(cfg.data, tokenizer).examples
    samples = client.generate([e.prompt_ids for e in examples], temperature=0, max_new_tokens=6)
    rollout = Rollout([e.prompt_ids for e in examples], [s[0].token_ids.tolist() for s in samples], "teacher")
    batch = token_batch(rollout, tokenizer.pad_token_id)

    def nll(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            lp = torch.log_softmax(model(batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1], -1)
        return -D.masked_mean(lp.gather(-1, batch.targets_BS[..., None])[..., 0], batch.mask_BS).item()

    before = nll(student_dir)
    after = nll(train(cfg, tmp_path))
    assert after < before - 0.5, (before, after)


def test_seqkd_best_of_n_with_a_task_verifier(teacher, student_dir, tmp_path):
    cfg = load_config(None, "seqkd", [f"student.path={student_dir}", f"teacher.target={teacher.target}",
                                      "data.source=reverse", "data.batch_size=2", "method.best_of=3",
                                      "sampling.max_new_tokens=6", "train.steps=2"])
    train(cfg, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["source"] for x in lines] == ["teacher", "teacher"]


def test_a_new_method_is_one_row(teacher, client, student_dir, data_file, tmp_path):
    """Teacher samples + reverse KL to the teacher's top-k: registered in one line, then trained by
    name against the real server; its loss on the teacher's (greedy) samples goes down."""
    from student_worker.methods import METHODS, Method, TeacherSamples, TopKDivergence, register_method

    method = register_method(Method("teacher-rkl", TeacherSamples(), TopKDivergence("reverse_kl")))
    try:
        cfg = config(student_dir, teacher.target, data_file, "method.name=teacher-rkl",
                     "sampling.temperature=0")
        assert method.needs_teacher and method.score_top_k(cfg) == 16
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        examples = PromptData(cfg.data, tokenizer).examples
        samples = client.generate([e.prompt_ids for e in examples], temperature=0, max_new_tokens=6)
        greedy = Rollout([e.prompt_ids for e in examples], [s[0].token_ids.tolist() for s in samples], "teacher")
        before = measure(greedy, student_dir, client, "reverse_kl")
        after = measure(greedy, train(cfg, tmp_path), client, "reverse_kl")
    finally:
        del METHODS["teacher-rkl"]
    assert after < before, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {x["source"] for x in lines} == {"teacher"} and all("divergence" in x for x in lines)


def test_prompts_from_a_datasets_folder(teacher, student_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(EXAMPLES).save_to_disk(str(tmp_path / "ds"))
    cfg = config(student_dir, teacher.target, tmp_path / "ds", "train.steps=2", preset="kd")
    train(cfg, tmp_path / "out")
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluation_reports_accuracy_and_draft_acceptance(teacher, student_dir, tmp_path):
    cfg = load_config(None, "gkd", [f"student.path={student_dir}", f"teacher.target={teacher.target}",
                                    "data.source=reverse", "data.batch_size=2", "sampling.max_new_tokens=6",
                                    "train.steps=2", "train.eval_every=2", "train.eval_prompts=8",
                                    "train.eval_acceptance_prompts=4"])
    train(cfg, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    for line in (lines[0], lines[2]):
        assert 0 <= line["dev_sampled"] <= 1 and 0 <= line["dev_greedy"] <= 1
        assert 0 <= line["dev_acceptance"] <= 1


def test_resume_is_bit_exact(teacher, student_dir, data_file, tmp_path):
    common = ["train.steps=4", "method.student_fraction=0.5", "optim.schedule=cosine", "optim.warmup_steps=1"]
    straight = train(config(student_dir, teacher.target, data_file, *common, preset="gkd"), tmp_path / "a")
    interrupted = config(student_dir, teacher.target, data_file, *common, "train.stop_after=2", preset="gkd")
    assert train(interrupted, tmp_path / "b").name == "step-000002"
    resumed = train(config(student_dir, teacher.target, data_file, *common, preset="gkd"), tmp_path / "b",
                    resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], load_file(student_dir / "model.safetensors")["lm_head.weight"])
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_tokenizer_mismatch_is_refused(teacher, data_file, tmp_path):
    other = make_tiny_model(tmp_path / "other-student", extra_tokens=3)
    with pytest.raises(SystemExit, match="tokenizer mismatch: the student .* has tokenizer fingerprint"):
        train(config(other, teacher.target, data_file, preset="kd"), tmp_path / "out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_cmd(student_dir, target, data_file, out, *extra):
    return ["student_worker", "--preset", "gkd", "--output-dir", str(out), f"student.path={student_dir}",
            f"teacher.target={target}", f"data.source={data_file}", "data.batch_size=2",
            "sampling.max_new_tokens=6", "teacher.top_k=8", *extra]


def test_torchrun_two_workers_hold_identical_weights(teacher, student_dir, data_file, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           *_worker_cmd(student_dir, teacher.target, data_file, tmp_path, "train.steps=3")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    final = tmp_path / "checkpoints" / "step-000003"
    digests = json.loads((final / "trainer_state.json").read_text())["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not torch.equal(model.lm_head.weight, AutoModelForCausalLM.from_pretrained(student_dir).lm_head.weight)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in lines] == [4, 4, 4]   # 2 prompts on each of 2 ranks


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


def test_teacher_killed_and_restarted_mid_run(tiny_model_dir, student_dir, data_file, tmp_path):
    port = _free_port()
    server = TeacherProcess(tiny_model_dir, "--port", str(port))
    server.wait_serving()
    worker = subprocess.Popen(
        [sys.executable, "-m", *_worker_cmd(student_dir, f"127.0.0.1:{port}", data_file, tmp_path,
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
        [sys.executable, "-m", *_worker_cmd(student_dir, server.target, data_file, tmp_path,
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

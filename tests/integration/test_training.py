"""The training loop in this process against a real teacher server on 127.0.0.1: every method lowers
its own loss, a new method is one row, evaluation, resume, refusals (the worker's process killed
teachers and torchrun: test_teacher_outages.py, tests/e2e/test_torchrun.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.data.prompts import PromptData
from student_worker.losses import divergences as D
from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from student_worker.train.trainer import train
from tests.helpers import EXAMPLES, worker_config


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
    cfg = worker_config(student_dir, teacher.target, data_file, *overrides, preset=preset)
    before = fixed_eval(cfg, student_dir, client, metric)
    final = train(cfg, tmp_path)
    after = fixed_eval(cfg, final, client, metric)
    assert after < before, f"{preset}: {metric} went from {before:.4f} to {after:.4f}"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert all(x["samples"] == 4 and x["completion_tokens"] > 0 for x in lines)


def test_seqkd_learns_the_teachers_greedy_samples(teacher, client, student_dir, data_file, tmp_path):
    cfg = worker_config(student_dir, teacher.target, data_file, "sampling.temperature=0", preset="seqkd")
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
    from student_worker.config import METHOD_SETTINGS
    from student_worker.methods import METHODS, Method, TeacherSamples, TopKDivergence, register_method

    method = register_method(Method("teacher-rkl", TeacherSamples(), TopKDivergence("reverse_kl")))
    try:
        cfg = worker_config(student_dir, teacher.target, data_file, "method.name=teacher-rkl",
                     "sampling.temperature=0")
        assert method.needs_teacher and method.score_top_k(cfg) == 16
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        examples = PromptData(cfg.data, tokenizer).examples
        samples = client.generate([e.prompt_ids for e in examples], temperature=0, max_new_tokens=6)
        greedy = Rollout([e.prompt_ids for e in examples], [s[0].token_ids.tolist() for s in samples], "teacher")
        before = measure(greedy, student_dir, client, "reverse_kl")
        after = measure(greedy, train(cfg, tmp_path), client, "reverse_kl")
    finally:
        del METHODS["teacher-rkl"], METHOD_SETTINGS["teacher-rkl"]
    assert after < before, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {x["source"] for x in lines} == {"teacher"} and all("divergence" in x for x in lines)


def test_prompts_from_a_datasets_folder(teacher, student_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(EXAMPLES).save_to_disk(str(tmp_path / "ds"))
    cfg = worker_config(student_dir, teacher.target, tmp_path / "ds", "train.steps=2", preset="kd")
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
    straight = train(worker_config(student_dir, teacher.target, data_file, *common, preset="gkd"), tmp_path / "a")
    interrupted = worker_config(student_dir, teacher.target, data_file, *common, "train.stop_after=2", preset="gkd")
    assert train(interrupted, tmp_path / "b").name == "step-000002"
    resumed = train(worker_config(student_dir, teacher.target, data_file, *common, preset="gkd"), tmp_path / "b",
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
        train(worker_config(other, teacher.target, data_file, preset="kd"), tmp_path / "out")

"""Padded vocabularies: a teacher and a student sharing one tokenizer (~100 real tokens) with
different embedding sizes train through the real server both ways round; padded ids are never
sampled by the student; the teacher-side mask (scoring.mask_padded) keeps them out of the top-k
and the normaliser; teacher ids the student cannot emit fold into the tail; the vLLM engines'
per-request mask stays within what vLLM's V2 model runner takes."""

import importlib.util
import json
import math
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.losses import divergences as D
from student_worker.config import load_config
from student_worker.rollouts.sampling import sample
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess
from teacher_server.scoring import score_logits

EXAMPLES = [{"prompt": "rev abc="}, {"prompt": "rev hello="}, {"prompt": "rev xy="}, {"prompt": "rev pq="}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("padded")
    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    return {vocab: make_tiny_model(root / f"v{vocab}", seed=vocab, vocab_size=vocab, extra_tokens=0,
                                   **small) for vocab in (384, 640)}


@pytest.mark.parametrize("teacher_vocab, student_vocab", [(640, 384), (384, 640)])
def test_train_across_padded_vocabularies(models, tmp_path, teacher_vocab, student_vocab):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    server = TeacherProcess(models[teacher_vocab])
    try:
        server.wait_serving()
        cfg = load_config(None, "gkd", [
            f"student.path={models[student_vocab]}", f"teacher.target={server.target}",
            f"data.source={data}", "data.batch_size=4", "sampling.max_new_tokens=8",
            "teacher.top_k=8", "train.steps=3", "train.eval_every=0"])
        train(cfg, tmp_path / "run", progress=False)
    finally:
        server.terminate()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(math.isfinite(x["loss"]) for x in lines)


def test_padded_ids_never_sampled(models):
    path = models[640]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    real = len(tokenizer)
    torch.manual_seed(0)
    outs = sample(model, [tokenizer("rev abc=").input_ids] * 8, max_new_tokens=20, eos_ids=[-1],
                  pad_id=0, real_vocab=real)
    ids = torch.tensor([t for o in outs for t in o.token_ids])
    assert ids.numel() == 160 and int(ids.max()) < real
    assert all(torch.isfinite(o.logprobs).all() for o in outs)


def test_teacher_masks_padded_ids():
    logits_NV = torch.randn(5, 64) * 4
    logits_NV[:, 40:] += 20          # padding rows that would win every top-k
    scores = score_logits(logits_NV, torch.zeros(5, dtype=torch.long), top_k=4, real_vocab=40)
    assert int(scores.topk_ids.max()) < 40
    expected = torch.log_softmax(logits_NV[:, :40], -1)
    assert torch.allclose(scores.token_logprobs, expected[:, 0], atol=1e-5)


def test_served_teacher_never_scores_or_draws_padded_ids(models):
    """Through the real server on a padded teacher: Score's top-k and normaliser, Generate's
    draws and Verify's probabilities all stay within the tokenizer's real ids."""
    from distill.client.teacher_client import TeacherClient

    path = models[640]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    real = len(tokenizer)
    ids = tokenizer("rev hello=olleh").input_ids
    server = TeacherProcess(path)
    try:
        server.wait_serving()
        with TeacherClient(server.target, timeout=60) as client:
            assert client.info().tokenizer_size == real < client.info().vocab_size == 640
            [scores] = client.score([ids], [1], top_k=64)
            samples = client.generate([ids[:4]] * 4, temperature=1.0, max_new_tokens=24, seed=3)
            q_GR = torch.full((2, real), 1.0 / real)      # full rows over the real vocabulary
            [verdict] = client.verify([ids[:4]], [ids[4:6]], draft_probs=[q_GR], seed=0)
    finally:
        server.terminate()
    assert int(scores.topk_ids.max()) < real
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1, :real].double()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(scores.token_logprobs.double(), expected, atol=1e-4)
    drawn = torch.cat([s.token_ids for per_prompt in samples for s in per_prompt])
    assert drawn.numel() > 0 and int(drawn.max()) < real
    assert 0 <= verdict.num_accepted <= 2 and verdict.next_token < real


def test_unreachable_teacher_ids_fold_into_the_tail():
    student_BTV = torch.log_softmax(torch.randn(1, 2, 10), -1)
    ids_BTK = torch.tensor([[[3, 12], [11, 4]]])            # 12 and 11: the student has 10 outputs
    teacher_BTK = torch.log(torch.tensor([[[0.5, 0.2], [0.3, 0.4]]]))
    tail_BT = torch.log(torch.tensor([[0.3, 0.3]]))
    student_b, teacher_b = D.topk_buckets(student_BTV, ids_BTK, teacher_BTK, tail_BT)
    assert torch.allclose(teacher_b.exp(), torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.4, 0.6]]]))
    assert torch.allclose(student_b.exp().sum(-1), torch.ones(1, 2))
    assert student_b[0, 0, 1] == -math.inf and student_b[0, 1, 0] == -math.inf
    # a padded id the student masks (-inf) folds the same way
    masked_BTV = student_BTV.clone()
    masked_BTV[..., 3] = -math.inf
    _, teacher_masked = D.topk_buckets(masked_BTV, ids_BTK, teacher_BTK, tail_BT)
    assert torch.allclose(teacher_masked.exp()[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    for name in ("forward_kl", "reverse_kl", "jsd"):
        assert torch.isfinite(D.divergence(name, student_BTV, teacher_topk_ids_BTK=ids_BTK,
                                           teacher_topk_logprobs_BTK=teacher_BTK,
                                           teacher_tail_logprobs_BT=tail_BT)).all()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_requests_stay_within_the_v2_model_runners_limits():
    """Qwen2.5-0.5B's shape: 151,936 embedding rows over a 151,665-token tokenizer. vLLM's V2
    model runner (GPUs with Triton; the CPU build runs V1 and would not notice) refuses more
    allowed ids or logit-bias entries per request than its constants in
    vllm/v1/worker/gpu/sample/logit_bias.py; the options both engines build must stay inside."""
    from vllm.v1.worker.gpu.sample.logit_bias import MAX_NUM_ALLOWED_TOKEN_IDS, MAX_NUM_LOGIT_BIAS_TOKENS

    from student_worker.rollouts.vllm_sampling import sampling_params
    from distill.padded_vocab import padded_ids_bias
    from teacher_server.backends.vllm_backend import VllmBackend

    real, rows = 151_665, 151_936
    bias = padded_ids_bias(real, rows, limit=MAX_NUM_LOGIT_BIAS_TOKENS)
    assert bias == dict.fromkeys(range(real, rows), -math.inf)
    teacher = types.SimpleNamespace(_padded_bias=bias)   # what VllmBackend._params reads
    requests = [*sampling_params(4, max_new_tokens=8, temperature=0.7, top_p=1.0, eos_ids=[2], seed=0,
                                 padded_bias=bias),
                VllmBackend._params(teacher, max_tokens=1, temperature=0.0, prompt_logprobs=8),
                VllmBackend._params(teacher, n=2, max_tokens=8, temperature=1.0, logprobs=0)]
    for params in requests:
        assert len(params.allowed_token_ids or ()) <= MAX_NUM_ALLOWED_TOKEN_IDS
        assert len(params.logit_bias) <= MAX_NUM_LOGIT_BIAS_TOKENS
        assert params.logit_bias is bias   # built once, never per request
    # more padded rows than the V2 runner takes: left unmasked (with a warning), never refused;
    # the V1 runner (no limit) masks them all; no padding, no bias
    over = real + MAX_NUM_LOGIT_BIAS_TOKENS + 1
    assert padded_ids_bias(real, over, limit=MAX_NUM_LOGIT_BIAS_TOKENS) is None
    assert len(padded_ids_bias(real, real + 5000, limit=None)) == 5000
    assert padded_ids_bias(rows, rows) is None and padded_ids_bias(None, rows) is None

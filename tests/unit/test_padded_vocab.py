"""Padded vocabularies (embeddings with more rows than the tokenizer has tokens): padded ids are
never sampled by the student; the teacher-side mask (scoring.mask_padded) keeps them out of the
top-k and the normaliser; teacher ids the student cannot emit fold into the tail; the vLLM engines'
per-request mask stays within what vLLM's V2 model runner takes (through the real server:
tests/integration/test_padded_vocab.py)."""

import math
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker.losses import divergences as D
from student_worker.rollouts.sampling import sample
from teacher_server.scoring import score_logits


def test_padded_ids_never_sampled(padded_models):
    path = padded_models[640]
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


@pytest.mark.vllm
def test_vllm_requests_stay_within_the_v2_model_runners_limits():
    """Qwen2.5-0.5B's shape: 151,936 embedding rows over a 151,665-token tokenizer. vLLM's V2
    model runner (GPUs with Triton; the CPU build runs V1 and would not notice) refuses more
    allowed ids or logit-bias entries per request than its constants in
    vllm/v1/worker/gpu/sample/logit_bias.py; the options both engines build must stay inside."""
    from vllm.v1.worker.gpu.sample.logit_bias import MAX_NUM_ALLOWED_TOKEN_IDS, MAX_NUM_LOGIT_BIAS_TOKENS

    from distill.padded_vocab import padded_ids_bias
    from student_worker.rollouts.vllm_sampling import sampling_params
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

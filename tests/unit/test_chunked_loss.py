"""Chunked loss and micro-batches, through each method's loss row, against the unchunked loss
over the full [B, S, V] log-softmax (bench.loss_memory.full_batch_loss), in float64: same
values, same gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from student_worker.losses import chunked_loss as C
from student_worker.losses import divergences as D
from student_worker.methods import get_method
from student_worker.train.micro_batches import accumulate_gradients, micro_batches
from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from tests.helpers.batches import (COMPLETIONS, PROMPTS, grads_of, method_config, teacher_scores,
                                   unchunked_reference)


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)


def _token_loss(cfg, batch, teacher, rollout):
    """The per-token loss and its inputs, from cfg's method's loss row (what the trainer uses)."""
    loss_row = get_method(cfg).loss
    return loss_row.per_token(cfg.method), loss_row.inputs(cfg.method, batch, teacher, rollout)


def _chunked(model, cfg, rollout, scores, chunk_size, micro_batch_size=0):
    model.zero_grad(set_to_none=True)
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(scores, rollout, batch.targets_BS.shape[1]) if scores else None
    token_loss, extras = _token_loss(cfg, batch, teacher, rollout)
    weights_M = C.reduction_weights(batch.mask_BS, cfg.method.reduction, C.completion_counts(batch.mask_BS))
    loss, token_lp_M = accumulate_gradients(
        model, model.get_output_embeddings(), batch.input_ids_BT, batch.attention_BT, batch.mask_BS, token_loss,
        weights_M, extras, micro_batch_size=micro_batch_size, chunk_size=chunk_size)
    return loss, grads_of(model), token_lp_M


def _assert_same(today, chunked):
    (loss_a, grads_a), (loss_b, grads_b) = today, chunked[:2]
    assert abs(loss_a.item() - loss_b.item()) <= 1e-6 * max(1.0, abs(loss_a.item()))
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=0, msg=name)
    assert any(g.abs().max() > 1e-4 for g in grads_a.values())   # something to compare


CASES = ([("sft", {}), ("sft", {"reduction": "sequence"})]
         + [("kd", {"divergence": name}) for name in D.DIVERGENCES]
         + [("gkd", {"divergence": "jsd", "beta": 0.3, "reduction": "sequence"}),
            ("kd", {"divergence": "skew_reverse_kl", "alpha": 0.2}),
            ("rlkd", {"use_reward": True, "kl_coef": 0.5}),
            ("rlkd", {"use_reward": False, "reduction": "sequence"})])


@pytest.mark.parametrize("name,fields", CASES, ids=[f"{n}-{'-'.join(map(str, f.values()))}" for n, f in CASES])
def test_chunked_equals_today(model64, name, fields):
    cfg = method_config(name, **fields)
    rollout = Rollout(PROMPTS, COMPLETIONS, "student", rewards=torch.tensor([1.0, 0.0, 0.5, 0.0]))
    scores = teacher_scores(model64.config.vocab_size)
    today = unchunked_reference(model64, cfg, rollout, scores)
    # chunks of 3 positions (not a divisor of any length), then micro-batches of 3 and 1 rows
    _assert_same(today, _chunked(model64, cfg, rollout, scores, chunk_size=3))
    _assert_same(today, _chunked(model64, cfg, rollout, scores, chunk_size=4, micro_batch_size=3))
    _assert_same(today, _chunked(model64, cfg, rollout, scores, chunk_size=0, micro_batch_size=1))


def test_token_logprobs_are_the_students(model64):
    rollout = Rollout(PROMPTS, COMPLETIONS, "data")
    batch = token_batch(rollout, pad_id=0)
    with torch.no_grad():
        logits_BSV = model64(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
    expected_M = torch.log_softmax(logits_BSV, -1).gather(-1, batch.targets_BS[..., None])[..., 0][batch.mask_BS]
    *_, token_lp_M = _chunked(model64, method_config("sft"), rollout, None, chunk_size=5, micro_batch_size=2)
    torch.testing.assert_close(token_lp_M, expected_M, atol=1e-9, rtol=0)


def test_micro_batches_cover_every_row_and_position():
    rollout = Rollout(PROMPTS, COMPLETIONS, "data")
    batch = token_batch(rollout, pad_id=0)
    parts = list(micro_batches(batch.mask_BS, batch.attention_BT, 3))
    assert [(p[0].start, p[0].stop) for p in parts] == [(0, 3), (3, 4)]
    assert [(p[1].start, p[1].stop) for p in parts] == [(0, 12), (12, 15)]
    assert [p[2] for p in parts] == [9, 7]   # the longest sequence of each micro-batch


def test_loss_is_float32_under_bf16_autocast(tiny_model_dir):
    """bf16 compute, float32 log-softmax and divergence; gradients reach float32 master weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)   # float32 weights
    rollout = Rollout(PROMPTS, COMPLETIONS, "student")
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(teacher_scores(model.config.vocab_size), rollout, batch.targets_BS.shape[1])
    seen = []
    divergence = C.topk_divergence("reverse_kl")

    def spy(logprobs_NV, targets_N, **extras):
        seen.append(logprobs_NV.dtype)
        return divergence(logprobs_NV, targets_N, **extras)

    weights_M = C.reduction_weights(batch.mask_BS, "token", C.completion_counts(batch.mask_BS))
    loss, _ = accumulate_gradients(model, model.get_output_embeddings(), batch.input_ids_BT, batch.attention_BT,
                                   batch.mask_BS, spy, weights_M, C.topk_extras(teacher, batch.mask_BS),
                                   chunk_size=4, autocast_dtype=torch.bfloat16)
    assert set(seen) == {torch.float32} and torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)

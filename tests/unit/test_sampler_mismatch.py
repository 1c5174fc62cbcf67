"""The training model's side of the sampler-mismatch metric (sampler_mismatch.trainer_token_logprobs)
against the full-batch log-softmax it replaces, in float64: same log-probs at every completion
target, masked like the loss, while no head call ever sees more than a chunk of positions; the
metric and the TIS weights as pure functions (against a vLLM engine: tests/e2e/test_vllm_sampling.py)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from student_worker.rollouts.rollout import Rollout, token_batch
from student_worker.rollouts.sampler_mismatch import (sampler_logprob_diff, sampler_logprobs_grid,
                                                      token_logprobs, trainer_token_logprobs,
                                                      truncated_importance_weights)
from student_worker.rollouts.vocab import RealVocabHead, mask_padded_logits

# uneven prompts and completions (a 1-token completion among them); ids up to 450 of 512 rows
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [20, 21], [30, 31, 32, 33]]
COMPLETIONS = [[40, 41, 42, 43], [50], [60, 61, 62, 63, 64, 65, 66], [70, 71, 450]]
REAL_VOCAB = 460   # rows 460..511 play the embedding's padding


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)


def full_batch_logprobs(model, batch, temperature: float, real_vocab: int | None) -> torch.Tensor:
    """What the trainer computed before: the whole batch's [B, S, V] logits, masked, one
    log-softmax at the temperature, the targets gathered; [B, S], 0 off the completions."""
    with torch.no_grad():
        logits_BSV = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
        logprobs_BS = token_logprobs(mask_padded_logits(logits_BSV, real_vocab), batch.targets_BS, temperature)
    return torch.where(batch.mask_BS, logprobs_BS, torch.zeros_like(logprobs_BS))


@pytest.mark.parametrize("chunk_size, micro_batch_size", [(3, 0), (5, 3), (0, 0), (1, 1)])
@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_chunked_logprobs_equal_the_full_log_softmax(model64, chunk_size, micro_batch_size,
                                                     temperature):
    batch = token_batch(Rollout(PROMPTS, COMPLETIONS, "student"), pad_id=0)
    head = RealVocabHead(model64.get_output_embeddings(), REAL_VOCAB)
    chunked_BS = trainer_token_logprobs(model64, head, batch, temperature, chunk_size=chunk_size,
                                        micro_batch_size=micro_batch_size)
    expected_BS = full_batch_logprobs(model64, batch, temperature, REAL_VOCAB)
    assert chunked_BS.dtype == torch.float64
    torch.testing.assert_close(chunked_BS, expected_BS, rtol=0, atol=1e-12)
    assert (chunked_BS[batch.mask_BS] < 0).all() and not chunked_BS.requires_grad
    # the mask matters: without it the padded rows take some of the mass
    unmasked_BS = full_batch_logprobs(model64, batch, temperature, None)
    assert (unmasked_BS[batch.mask_BS] < chunked_BS[batch.mask_BS]).all()


def test_no_head_call_sees_more_than_a_chunk(model64):
    """The largest logits tensor is chunk × V: the model's own forward asks for one position per
    row (logits_to_keep=1), and the head then runs on chunk_size completion positions at a time."""
    batch = token_batch(Rollout(PROMPTS, COMPLETIONS, "student"), pad_id=0)
    rows_seen = []
    hook = model64.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows_seen.append(out.shape[:-1].numel()))
    try:
        trainer_token_logprobs(model64, RealVocabHead(model64.get_output_embeddings(), REAL_VOCAB),
                               batch, 1.0, chunk_size=4, micro_batch_size=2)
    finally:
        hook.remove()
    M = int(batch.mask_BS.sum())
    assert max(rows_seen) <= 4 < M
    # two micro-batches of 2 rows: 2 one-position logits each, then ceil(positions / 4) chunks
    assert sum(rows_seen) == 2 * 2 + M


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_a_lora_student_gives_its_adapted_logprobs(model64):
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model64), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():   # lora_B starts at zero (a no-op adapter): make it do something
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    batch = token_batch(Rollout(PROMPTS, COMPLETIONS, "student"), pad_id=0)
    chunked_BS = trainer_token_logprobs(lora, RealVocabHead(lora.get_output_embeddings(), REAL_VOCAB),
                                        batch, 0.7, chunk_size=3)
    torch.testing.assert_close(chunked_BS, full_batch_logprobs(lora, batch, 0.7, REAL_VOCAB),
                               rtol=0, atol=1e-12)
    base_BS = full_batch_logprobs(model64, batch, 0.7, REAL_VOCAB)
    assert not torch.allclose(chunked_BS, base_BS)   # the adapter's, not the base model's


def test_sampler_logprob_diff_counts_completion_tokens_only():
    sampler_BS = torch.tensor([[9.0, -1.0, -2.0], [9.0, -0.5, 9.0]])
    trainer_BS = torch.tensor([[0.0, -1.5, -2.0], [0.0, -0.2, 0.0]])
    mask_BS = torch.tensor([[False, True, True], [False, True, False]])
    diff = sampler_logprob_diff(sampler_BS, trainer_BS, mask_BS)
    assert diff["sampler_logprob_diff_max"] == pytest.approx(0.5)
    assert diff["sampler_logprob_diff_mean"] == pytest.approx((0.5 + 0.0 + 0.3) / 3)


def test_truncated_importance_weights():
    trainer_BS = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    sampler_BS = torch.tensor([[-1.0, -1.2, -3.0, -0.5]])
    mask_BS = torch.tensor([[True, True, True, False]])
    weights_BS = truncated_importance_weights(trainer_BS, sampler_BS, mask_BS, cap=2.0)
    # p/q = 1, e^0.2, e^2 capped at 2, and 0 off the completion
    torch.testing.assert_close(weights_BS, torch.tensor([[1.0, math.exp(0.2), 2.0, 0.0]]))
    assert not weights_BS.requires_grad


def test_sampler_logprobs_land_on_the_target_grid():
    grid_BS = sampler_logprobs_grid([torch.tensor([-1.0, -2.0]), torch.tensor([-3.0])], [3, 1], 5)
    torch.testing.assert_close(grid_BS, torch.tensor([[0.0, 0.0, -1.0, -2.0, 0.0],
                                                      [-3.0, 0.0, 0.0, 0.0, 0.0]]))

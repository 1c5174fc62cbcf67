"""How far the sampler's policy is from the trained one, and the correction for it.

A completion sampled by another engine (vLLM, weights synced every few steps, other kernels)
comes from a policy q that is close to, not equal to, the training model's p. Per completion
token we compare the sampler's log q(token) with the training model's log p(token), both at the
sampling temperature: their absolute difference, averaged and maximised over the batch, is what
TRL and verl log (`sampler_logprob_diff_mean`, `sampler_logprob_diff_max`); a sync that went
wrong shows as a jump. Truncated importance sampling (TIS) weights each token's loss by
min(p / q, cap), so the gradient is that of on-policy samples where the two disagree, with a
bounded variance.

All tensors are on the loss's [B, S] target grid (rollout.py): index s is the token at s + 1.

The training model's side (`trainer_token_logprobs`) costs one extra no-grad forward per step and
never the batch's [B, S, V] logits: the output head runs on a chunk of completion positions at a
time (train.loss_chunk_size, as the loss does), and only each target's log-prob is kept.
"""

from __future__ import annotations

import math

import torch

from student_worker.losses.chunked_loss import completion_hidden
from student_worker.train.micro_batches import micro_batches


def sampler_logprobs_grid(sampled_logprobs: list[torch.Tensor], prompt_lens: list[int],
                          S: int) -> torch.Tensor:
    """The per-completion log-probs a sampler reported (Rollout.sampled_logprobs) placed on
    the [B, S] target grid; 0 off the completions."""
    grid_BS = torch.zeros((len(sampled_logprobs), S))
    for row, (logprobs_L, plen) in enumerate(zip(sampled_logprobs, prompt_lens)):
        grid_BS[row, plen - 1:plen - 1 + logprobs_L.numel()] = logprobs_L
    return grid_BS


def token_logprobs(logits_BSV: torch.Tensor, targets_BS: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[target] per position, float32 [B, S] (any leading shape, e.g. a
    chunk's [N]): the training model's log-probs of the sampled tokens at the sampling
    temperature (T = 0, greedy, counts as 1, as the samplers report it). Float64 logits stay
    float64."""
    logits_BSV = logits_BSV.to(torch.promote_types(logits_BSV.dtype, torch.float32))
    logprobs_BSV = torch.log_softmax(logits_BSV / (temperature or 1.0), -1)
    return logprobs_BSV.gather(-1, targets_BS[..., None])[..., 0]


@torch.no_grad()
def trainer_token_logprobs(model, head: torch.nn.Module, batch, temperature: float, *,
                           chunk_size: int = 128, micro_batch_size: int = 0,
                           autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """log p_T(target) = log_softmax(head(h) / T)[target] at every completion target, on the
    [B, S] grid (0 off the mask): what `compare_with_sampler` holds against the sampler's.

    model: the training model (plain, PEFT or FSDP2; under FSDP2 its forward is collective, so
    every rank calls this, as every rank runs the loss). head: its output embedding, masked like
    the loss's (vocab.RealVocabHead). batch: a rollout.TokenBatch on the model's device.
    chunk_size: completion positions whose [chunk_size, V] logits exist at once (0: all);
    micro_batch_size: rows per forward (0: all); autocast_dtype: the loss's mixed precision, so
    p is the policy the loss trains. The forward and the chunking are the loss's own
    (chunked_loss.completion_hidden, micro_batches.micro_batches).

    Memory: the forward without activations kept for backward, then a few chunk_size × V floats;
    never [B, S, V].
    """
    mask_BS = batch.mask_BS
    targets_M = batch.targets_BS[mask_BS]
    logprobs_M = []
    for rows, positions, width in micro_batches(mask_BS, batch.attention_BT, micro_batch_size):
        with torch.autocast(batch.input_ids_BT.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            hidden_MH = completion_hidden(model, batch.input_ids_BT[rows, :width],
                                          batch.attention_BT[rows, :width], mask_BS[rows, :width - 1])
            targets_N = targets_M[positions]
            size = chunk_size or max(hidden_MH.shape[0], 1)
            for start in range(0, hidden_MH.shape[0], size):
                chunk = slice(start, start + size)
                logprobs_M.append(token_logprobs(head(hidden_MH[chunk]), targets_N[chunk], temperature))
    values_M = torch.cat(logprobs_M) if logprobs_M else torch.zeros(0, device=mask_BS.device)
    grid_BS = torch.zeros(mask_BS.shape, dtype=values_M.dtype, device=mask_BS.device)
    grid_BS[mask_BS] = values_M
    return grid_BS


def sampler_logprob_diff(sampler_logprobs_BS: torch.Tensor, trainer_logprobs_BS: torch.Tensor,
                         mask_BS: torch.Tensor) -> dict[str, float]:
    """Mean and max of |log q - log p| over the completion tokens (mask_BS true)."""
    diff_N = (sampler_logprobs_BS - trainer_logprobs_BS).detach().abs()[mask_BS]
    if diff_N.numel() == 0:
        return {"sampler_logprob_diff_mean": 0.0, "sampler_logprob_diff_max": 0.0}
    return {"sampler_logprob_diff_mean": diff_N.mean().item(),
            "sampler_logprob_diff_max": diff_N.max().item()}


def truncated_importance_weights(trainer_logprobs_BS: torch.Tensor,
                                 sampler_logprobs_BS: torch.Tensor, mask_BS: torch.Tensor,
                                 cap: float = 2.0) -> torch.Tensor:
    """w = min(p / q, cap) = min(exp(log p - log q), cap) per completion token, 0 elsewhere.

    A constant (no gradient): the loss is sum(w * per-token loss), so the gradient flows through
    the loss only, as in TIS (Yao et al. 2025, "off-policy RL from the inference engine").
    Shapes: [B, S] in, [B, S] out. Equal log-probs give w = 1 on the mask.
    """
    log_ratio_BS = (trainer_logprobs_BS - sampler_logprobs_BS).detach()
    weights_BS = log_ratio_BS.clamp(max=math.log(cap)).exp()
    return torch.where(mask_BS, weights_BS, torch.zeros_like(weights_BS))


def compare_with_sampler(rollout, batch, trainer_BS: torch.Tensor, sampling, step: int) -> dict:
    """What the trainer logs of a rollout the vllm engine sampled (an empty dict for others):
    sampler_staleness (optimizer steps since the weights it sampled with) and the log-prob
    difference above; with sampling.tis_cap, also sets the batch's TIS token weights.

    rollout: a Rollout; batch: its TokenBatch on the device; trainer_BS: the training model's
    log-probs of the targets at the sampling temperature (`trainer_token_logprobs`); sampling:
    the SamplingConfig; step: the optimizer steps taken so far (those of the weights being
    trained).
    """
    if rollout.sampler_weights_step is None:
        return {}
    sampler_BS = sampler_logprobs_grid(rollout.sampled_logprobs, rollout.prompt_lens,
                                       batch.mask_BS.shape[1]).to(trainer_BS.device)
    logs = {"sampler_staleness": step - rollout.sampler_weights_step,
            **sampler_logprob_diff(sampler_BS, trainer_BS, batch.mask_BS)}
    if sampling.tis_cap is not None:
        batch.token_weights_BS = truncated_importance_weights(trainer_BS, sampler_BS, batch.mask_BS,
                                                              sampling.tis_cap)
        logs["tis_weight_mean"] = batch.token_weights_BS[batch.mask_BS].mean().item()
    return logs

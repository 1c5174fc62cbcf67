"""Sampling completions from the student: a batched, KV-cached decode loop.

Prefill the left-padded prompts once, then feed one token per row per step with the model's
past_key_values, until every row has produced an end-of-sequence token or max_new_tokens. It
samples exactly what Hugging Face `generate` samples with the same seed (same positions, same
temperature / top-p filtering, one torch.multinomial over all B rows per step, pad fed after a
row's end), minus generate's per-step bookkeeping; and it keeps only the chosen tokens'
log-probs, never the [B, L, V] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from student_worker.rollouts.tokens import cut_at_eos, pad
from student_worker.rollouts.vocab import mask_padded_logits
from student_worker.train.parallel import full_weights


@dataclass
class Completion:
    token_ids: list[int]       # new tokens, ending with the first EOS when one was produced
    logprobs: torch.Tensor     # float32 [L]: log q(token) under the sampling temperature
    finished: bool             # ended with EOS (else hit max_new_tokens)
    probs: torch.Tensor | None = None  # float32 [L, V]: the sampling distribution at each step


def top_p_filter(scores_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """scores with -inf outside the smallest set of most likely tokens whose mass reaches top_p
    (the most likely token always stays); the same cut as transformers' TopPLogitsWarper."""
    sorted_BV, order_BV = torch.sort(scores_BV, descending=False)
    drop_sorted_BV = sorted_BV.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_sorted_BV[:, -1] = False
    return scores_BV.masked_fill(drop_sorted_BV.scatter(1, order_BV, drop_sorted_BV), -float("inf"))


def choose(logits_BV: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token per row [B] and log softmax(logits / temperature) [B, V] (before top-p:
    the policy's log-probs the loss assumes). temperature 0: greedy."""
    if temperature == 0:
        return logits_BV.argmax(-1), torch.log_softmax(logits_BV, -1)
    scores_BV = logits_BV / temperature if temperature != 1.0 else logits_BV
    logprobs_BV = torch.log_softmax(scores_BV, -1)
    if top_p < 1.0:
        scores_BV = top_p_filter(scores_BV, top_p)
    return torch.multinomial(scores_BV.softmax(-1), 1)[:, 0], logprobs_BV


@torch.no_grad()   # not inference_mode: FSDP2 would make its gathered weights inference tensors
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, eos_ids: list[int], pad_id: int,
           return_probs: bool = False, real_vocab: int | None = None) -> list[Completion]:
    """Continue each prompt once. Prompts are left-padded so that all end at the same column,
    which is what a batched KV-cache decode needs. return_probs adds each step's full
    distribution softmax(logits / temperature) (a speculative draft's q; costs L x V floats).
    real_vocab: the tokenizer's size; ids at or beyond it (embedding padding) are never drawn.

    An FSDP-sharded model gathers its weights once, in the prefill (collective: every rank
    samples at the same time), and keeps them to the end (parallel.full_weights)."""
    was_training = model.training
    model.eval()   # no dropout; and gradient checkpointing in training mode would turn the cache off
    try:
        with full_weights(model):
            return _decode(model, prompts, max_new_tokens, temperature, top_p, eos_ids, pad_id, return_probs,
                           real_vocab)
    finally:
        model.train(was_training)


def _decode(model, prompts, max_new_tokens, temperature, top_p, eos_ids, pad_id, return_probs,
            real_vocab) -> list[Completion]:
    device = next(model.parameters()).device
    input_ids_BP, mask_BP = (t.to(device) for t in pad(prompts, pad_id, side="left"))
    position_BP = (mask_BP.cumsum(-1) - 1).clamp(min=0)   # real tokens count from 0 (pads: 0)
    eos = torch.tensor(eos_ids, device=device)
    running_B = torch.ones(len(prompts), dtype=torch.bool, device=device)
    tokens, logprobs, probs = [], [], []
    # prefill: the logits of the last column only (the rest would be [B, P, V] for nothing)
    out = model(input_ids=input_ids_BP, attention_mask=mask_BP, position_ids=position_BP,
                use_cache=True, logits_to_keep=1)
    position_B1 = position_BP[:, -1:]
    step = 0
    while True:
        token_B, logprobs_BV = choose(mask_padded_logits(out.logits[:, -1].float(), real_vocab),
                                      temperature, top_p)
        token_B = token_B.masked_fill(~running_B, pad_id)    # rows that ended are fed padding
        tokens.append(token_B)
        logprobs.append(logprobs_BV.gather(-1, token_B[:, None])[:, 0])
        if return_probs:
            probs.append(logprobs_BV.exp())
        running_B &= ~torch.isin(token_B, eos)
        if not (running_B.any() and step < max_new_tokens - 1):   # note: a device sync per step
            break
        mask_BP = torch.cat([mask_BP, mask_BP.new_ones(len(prompts), 1)], -1)
        position_B1 = position_B1 + 1
        out = model(input_ids=token_B[:, None], attention_mask=mask_BP, position_ids=position_B1,
                    past_key_values=out.past_key_values, use_cache=True)
        step += 1
    new_BL, logprobs_BL = torch.stack(tokens, 1).cpu(), torch.stack(logprobs, 1).cpu()
    probs_BLV = torch.stack(probs, 1).cpu() if return_probs else None
    completions = []
    for row, row_tokens in enumerate(new_BL.tolist()):
        kept, finished = cut_at_eos(row_tokens, eos_ids)
        n = len(kept)
        completions.append(Completion(kept, logprobs_BL[row, :n], finished,
                                      probs_BLV[row, :n] if return_probs else None))
    return completions

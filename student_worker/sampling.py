"""Sampling completions from the student: batched, KV-cached (Hugging Face `generate`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from student_worker.tokens import cut_at_eos, pad
from student_worker.vocab import mask_padded_logits


@dataclass
class Completion:
    token_ids: list[int]       # new tokens, ending with the first EOS when one was produced
    logprobs: torch.Tensor     # float32 [L]: log q(token) under the sampling temperature
    finished: bool             # ended with EOS (else hit max_new_tokens)
    probs: torch.Tensor | None = None  # float32 [L, V]: the sampling distribution at each step


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, eos_ids: list[int], pad_id: int,
           return_probs: bool = False, real_vocab: int | None = None) -> list[Completion]:
    """Continue each prompt once. Prompts are left-padded so that all end at the same column,
    which is what a batched KV-cache decode needs. return_probs adds each step's full
    distribution softmax(logits / temperature) (a speculative draft's q; costs L x V floats).
    real_vocab: the tokenizer's size; ids at or beyond it (embedding padding) are never drawn."""
    device = next(model.parameters()).device
    input_ids_BP, mask_BP = pad(prompts, pad_id, side="left")
    width = input_ids_BP.shape[1]
    greedy = temperature == 0
    # A config of our own: `generate` would otherwise fill unset options from the checkpoint's
    # generation_config.json (top_k=50, repetition penalties, ...) and sample another policy than
    # the one the loss assumes. top_k=0 switches off the default top-50 cut.
    config = GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None if greedy else 0, max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids, pad_token_id=pad_id, return_dict_in_generate=True, output_logits=True)
    vocab = model.get_output_embeddings().out_features
    if real_vocab is not None and real_vocab < vocab:
        config.suppress_tokens = list(range(real_vocab, vocab))
    out = model.generate(input_ids=input_ids_BP.to(device), attention_mask=mask_BP.to(device),
                         generation_config=config)
    new_BL = out.sequences[:, width:].cpu()
    logits_BLV = mask_padded_logits(torch.stack(out.logits, dim=1).float().cpu(), real_vocab)
    logprobs_BLV = torch.log_softmax(logits_BLV / (temperature or 1.0), -1)
    logprobs_BL = logprobs_BLV.gather(-1, new_BL[..., None])[..., 0]
    completions = []
    for row in range(len(prompts)):
        tokens, finished = cut_at_eos(new_BL[row].tolist(), eos_ids)
        n = len(tokens)
        completions.append(Completion(tokens, logprobs_BL[row, :n], finished,
                                      logprobs_BLV[row, :n].exp() if return_probs else None))
    return completions

"""Sampling completions from the student: batched, KV-cached (Hugging Face `generate`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import GenerationConfig

from student_worker.chosen_logprobs import ChosenTokenLogprobs
from student_worker.parallel import is_sharded
from student_worker.tokens import cut_at_eos, pad


@dataclass
class Completion:
    token_ids: list[int]       # new tokens, ending with the first EOS when one was produced
    logprobs: torch.Tensor     # float32 [L]: log q(token) under the sampling temperature
    finished: bool             # ended with EOS (else hit max_new_tokens)
    probs: torch.Tensor | None = None  # float32 [L, V]: the sampling distribution at each step


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, eos_ids: list[int], pad_id: int,
           return_probs: bool = False) -> list[Completion]:
    """Continue each prompt once. Prompts are left-padded so that all end at the same column,
    which is what a batched KV-cache decode needs. Only the chosen tokens' log-probs are kept
    (chosen_logprobs.ChosenTokenLogprobs: one [B, V] at a time, not every step's logits);
    return_probs adds each step's full distribution softmax(logits / temperature) (a speculative
    draft's q; keeps every step's logits, L x V floats per prompt).

    An FSDP-sharded model decodes with synced_gpus: each step all-gathers every layer's weights,
    so ranks keep stepping (on finished rows) until every rank's batch is done."""
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
        eos_token_id=eos_ids, pad_token_id=pad_id, return_dict_in_generate=True, output_logits=return_probs)
    recorder = None if return_probs else ChosenTokenLogprobs(temperature)
    synced = is_sharded(model) and dist.is_initialized() and dist.get_world_size() > 1
    out = model.generate(input_ids=input_ids_BP.to(device), attention_mask=mask_BP.to(device),
                         generation_config=config, logits_processor=[recorder] if recorder else None,
                         synced_gpus=synced)
    new_BL = out.sequences[:, width:]
    if recorder is not None:
        logprobs_BL, probs_BLV = recorder.finish(new_BL).cpu(), None
    else:
        logprobs_BLV = torch.log_softmax(torch.stack(out.logits, dim=1).float().cpu() / (temperature or 1.0), -1)
        logprobs_BL = logprobs_BLV.gather(-1, new_BL.cpu()[..., None])[..., 0]
        probs_BLV = logprobs_BLV.exp()
    new_BL = new_BL.cpu()
    completions = []
    for row in range(len(prompts)):
        tokens, finished = cut_at_eos(new_BL[row].tolist(), eos_ids)
        n = len(tokens)
        completions.append(Completion(tokens, logprobs_BL[row, :n], finished,
                                      probs_BLV[row, :n] if probs_BLV is not None else None))
    return completions

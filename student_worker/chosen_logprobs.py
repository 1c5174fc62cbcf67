"""Sampling that keeps only the chosen tokens' log-probs, not every step's logits.

`sampling.sample` asks `generate` for `output_logits=True`: float32 [B, V] logits for every
generated step, kept to the end (64 prompts x 1k tokens x 152k vocabulary is ~37 GiB, twice that
once log-softmaxed). Training needs only log q(chosen token) per step. `ChosenTokenLogprobs` is a
LogitsProcessor that keeps one step's log-probs at a time: at step t it sees the token chosen at
step t - 1 (the last column of input_ids) and records its log-prob, then replaces the kept
[B, V] with this step's. Memory: one [B, V] plus [B, L] floats.

Custom processors run before `generate`'s temperature / top-k / top-p warpers, so the scores it
sees are the raw float32 logits (the same as output_logits) and the log-prob is that of
softmax(logits / temperature), before top-p: the policy the loss assumes.

Phase 2 folds this into sampling.sample (`sample_chosen` here is its prototype, tested equal).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor

from student_worker.sampling import Completion


class ChosenTokenLogprobs(LogitsProcessor):
    """Records log softmax(logits / temperature)[chosen token] at every generated step."""

    def __init__(self, temperature: float):
        self.temperature = temperature or 1.0
        self.logprobs: list[torch.Tensor] = []       # [B] per step, float32, on the model's device
        self._previous_BV: torch.Tensor | None = None

    def _record(self, chosen_B: torch.Tensor) -> None:
        self.logprobs.append(self._previous_BV.gather(-1, chosen_B[:, None])[:, 0])

    def __call__(self, input_ids_BT: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        if self._previous_BV is not None:
            self._record(input_ids_BT[:, -1])
        self._previous_BV = torch.log_softmax(scores_BV.float() / self.temperature, -1)
        return scores_BV

    def finish(self, new_BL: torch.Tensor) -> torch.Tensor:
        """The [B, L] log-probs of the L generated tokens (the last step's is recorded here)."""
        if len(self.logprobs) < new_BL.shape[1]:
            self._record(new_BL[:, -1].to(self._previous_BV.device))
        self._previous_BV = None
        return torch.stack(self.logprobs, 1) if self.logprobs else new_BL.new_zeros(new_BL.shape, dtype=torch.float32)


@torch.no_grad()
def sample_chosen(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                  top_p: float = 1.0, eos_ids: list[int], pad_id: int, synced_gpus: bool = False) -> list[Completion]:
    """sampling.sample without every step's logits: the same tokens for a seed, the same
    log-probs. synced_gpus=True for an FSDP model: ranks keep stepping until all are done (each
    step all-gathers every layer; a rank that stopped early would leave the others waiting)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids_BP = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask_BP = torch.zeros_like(input_ids_BP)
    for row, p in enumerate(prompts):
        input_ids_BP[row, width - len(p):] = torch.tensor(p)
        mask_BP[row, width - len(p):] = 1
    greedy = temperature == 0
    config = GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None if greedy else 0, max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids, pad_token_id=pad_id, return_dict_in_generate=True)
    recorder = ChosenTokenLogprobs(temperature)
    out = model.generate(input_ids=input_ids_BP.to(device), attention_mask=mask_BP.to(device),
                         generation_config=config, logits_processor=[recorder], synced_gpus=synced_gpus)
    new_BL = out.sequences[:, width:]
    logprobs_BL = recorder.finish(new_BL).cpu()
    new_BL = new_BL.cpu()
    eos = torch.tensor(eos_ids)
    completions = []
    for row in range(len(prompts)):
        tokens = new_BL[row]
        stops = torch.isin(tokens, eos).nonzero()
        length = int(stops[0]) + 1 if stops.numel() else tokens.numel()
        completions.append(Completion(tokens[:length].tolist(), logprobs_BL[row, :length], bool(stops.numel())))
    return completions

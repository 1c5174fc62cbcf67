"""Sampling that keeps only the chosen tokens' log-probs, not every step's logits.

`generate(output_logits=True)` keeps float32 [B, V] logits of every generated step to the end (64 prompts x 1k tokens x 152k vocabulary is ~37 GiB, twice that
once log-softmaxed). Training needs only log q(chosen token) per step. `ChosenTokenLogprobs` is a
LogitsProcessor that keeps one step's log-probs at a time: at step t it sees the token chosen at
step t - 1 (the last column of input_ids) and records its log-prob, then replaces the kept
[B, V] with this step's. Memory: one [B, V] plus [B, L] floats.

Custom processors run before `generate`'s temperature / top-k / top-p warpers, so the scores it
sees are the raw float32 logits (the same as output_logits) and the log-prob is that of
softmax(logits / temperature), before top-p: the policy the loss assumes.

sampling.sample uses it (tests/test_chosen_logprobs.py: equal to the logits path).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


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

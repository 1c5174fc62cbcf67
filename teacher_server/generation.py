"""Teacher sampling (Generate): the work item and the pure tensor steps around the backend's
decoding loop. No I/O, no grpc."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from distill.results import TeacherSample


@dataclass
class GenerateItem:
    """One Generate request, validated: `num_samples` continuations of each prompt.

    A request stays one item so that the batcher never splits it: with a seed, its samples then
    depend only on the request, not on whatever else was queued beside it.
    """

    prompts: list[torch.Tensor]  # int64 [P_i] each
    num_samples: int
    temperature: float          # >= 0; 0 is greedy
    top_p: float                # 0 < top_p <= 1
    max_new_tokens: int
    stop_ids: list[int]         # empty: the model's end-of-sequence ids
    seed: int | None

    @property
    def num_tokens(self) -> int:
        """The token budget it costs the batcher: every sample holds its prompt and new tokens."""
        return sum(p.numel() + self.max_new_tokens for p in self.prompts) * self.num_samples

    @property
    def options(self) -> tuple:
        """Items with equal options can be decoded in one batched call."""
        return self.temperature, self.top_p, self.max_new_tokens, tuple(self.stop_ids)


def token_logprobs(logits_steps: Sequence[torch.Tensor], tokens_BL: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at each chosen token: [B, L] float32.

    `logits_steps` holds L raw [B, V] logit rows, one per decoding step (before top-p truncation,
    so the log-prob is the model's, not the truncated sampler's). Greedy (temperature 0) is
    scored at temperature 1. One step at a time: a [B, L, V] float32 copy could be gigabytes.
    """
    t = temperature or 1.0
    return torch.stack([
        torch.log_softmax(logits_BV.float() / t, dim=-1).gather(-1, tokens_BL[:, i, None])[:, 0]
        for i, logits_BV in enumerate(logits_steps)], dim=1)


def cut_at_stop(tokens_L: torch.Tensor, logprobs_L: torch.Tensor,
                stop_ids: Sequence[int]) -> TeacherSample:
    """Keep tokens up to and including the first stop token ("stop"); all of them when none
    occurs ("length": the decoder ran to max_new_tokens). Batched decoding pads a sample that
    stopped early until its batch-mates finish; this drops that padding."""
    hits = torch.isin(tokens_L, torch.tensor(list(stop_ids), dtype=tokens_L.dtype)).nonzero()
    if hits.numel():
        end = int(hits[0, 0]) + 1
        return TeacherSample(tokens_L[:end], logprobs_L[:end], "stop")
    return TeacherSample(tokens_L, logprobs_L, "length")

"""Teacher sampling (Generate): the work item and the pure tensor steps around the backend's
decoding loop. No I/O, no grpc."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessor

from distill.results import TeacherSample
from teacher_server.scoring import mask_padded


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
    def padded_shape(self) -> tuple[int, int]:
        """One block of its tokens in the batcher's passes (`generate` runs them separately)."""
        return 1, self.num_tokens

    @property
    def options(self) -> tuple:
        """Items with equal options can be decoded in one batched call."""
        return self.temperature, self.top_p, self.max_new_tokens, tuple(self.stop_ids)


class MaskPadded(LogitsProcessor):
    """Puts the embedding's padded ids (at or beyond the tokenizer's size) at -inf during
    `generate`, so they are never drawn and get no share of the chosen tokens' log-probs."""

    def __init__(self, real_vocab: int | None):
        self.real_vocab = real_vocab

    def __call__(self, input_ids_BL: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        return mask_padded(scores_BV, self.real_vocab)


class ChosenLogprobs(LogitsProcessor):
    """Records log softmax(logits / temperature) at each step's chosen token, during `generate`.

    `generate(output_logits=True)` would keep every step's raw [B, V] logits until the call
    returns (256 samples x 1k steps x 152k vocabulary in float32 is ~160 GB); this keeps one
    step's [B, V] log-probs plus a [B] column per step. A step's token is only known at the next
    call (the last column of `input_ids`), so each call settles the previous step and `finish`
    the last. Placed in `logits_processor`, it runs before the temperature and top-p warpers that
    `generate` appends, so the log-prob is the model's, not the truncated sampler's. Greedy
    (temperature 0) is scored at temperature 1.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature or 1.0
        self.last_BV: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []   # [B] per settled step

    def __call__(self, input_ids_BL: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        self._settle(input_ids_BL[:, -1])
        self.last_BV = torch.log_softmax(scores_BV.float() / self.temperature, dim=-1)
        return scores_BV

    def _settle(self, chosen_B: torch.Tensor) -> None:
        if self.last_BV is not None:
            self.columns.append(self.last_BV.gather(-1, chosen_B[:, None])[:, 0])
            self.last_BV = None

    def finish(self, new_BL: torch.Tensor) -> torch.Tensor:
        """The log-probs of the new tokens [B, L] (L steps ran), float32."""
        self._settle(new_BL[:, -1])
        return torch.stack(self.columns, dim=1)


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

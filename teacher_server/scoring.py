"""Turning teacher logits into what Score returns. Pure tensor functions, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distill.results import TeacherScores


@dataclass
class ScoreItem:
    """One sequence to score, validated. Positions score_from .. T-1 are scored (N of them)."""

    token_ids: torch.Tensor            # int64 [T]
    score_from: int
    top_k: int
    temperature: float
    candidate_ids: torch.Tensor | None  # int64 [N, C] or None

    @property
    def num_tokens(self) -> int:
        return self.token_ids.numel()

    @property
    def num_scored(self) -> int:
        return self.num_tokens - self.score_from


def mask_padded(logits_NV: torch.Tensor, real_vocab: int | None) -> torch.Tensor:
    """logits with the columns at or beyond real_vocab (embedding rows past the tokenizer's
    tokens) at -inf: padded ids get no probability, no top-k place and no share of logZ."""
    if real_vocab is None or real_vocab >= logits_NV.shape[-1]:
        return logits_NV
    return logits_NV.float().index_fill(-1, torch.arange(real_vocab, logits_NV.shape[-1],
                                                         device=logits_NV.device), float("-inf"))


def score_logits(logits_NV: torch.Tensor, targets_N: torch.Tensor, top_k: int,
                 temperature: float = 1.0, candidates_NC: torch.Tensor | None = None,
                 real_vocab: int | None = None) -> TeacherScores:
    """Top-k log-probs, the actual token's log-prob, the tail mass and candidate log-probs.

    With z = logits / temperature and logZ = logsumexp(z):
        topk_logprobs[n]  = the k largest z[n] - logZ[n]  (descending)
        token_logprobs[n] = z[n, targets[n]] - logZ[n]
        tail_logprobs[n]  = logsumexp(z[n, v] for v not in top-k) - logZ[n]
    The tail is summed from the remaining probabilities, not computed as log(1 - sum(top-k
    probs)): that subtraction loses every tail below float32's epsilon (1e-7), the common case.
    exp(z - max) is computed once and reused for logZ and the tail (exp over [N, V] is the most
    expensive step on a CPU). Rows whose tail underflows (below e^-87 of the top token) are
    redone with a logsumexp, so a tail is -inf only when k is the vocabulary.
    Work happens on the logits' device in float32; only the [N, k] results move to the CPU.
    real_vocab: the tokenizer's size; ids at or beyond it are masked (`mask_padded`).
    """
    z_NV = mask_padded(logits_NV, real_vocab).float()
    if temperature != 1.0:
        z_NV = z_NV / temperature
    max_N1 = z_NV.max(dim=-1, keepdim=True).values
    exp_NV = torch.exp(z_NV - max_N1)                       # a new buffer, ours to modify
    logz_N1 = max_N1 + exp_NV.sum(dim=-1, keepdim=True).log()
    topk_z_NK, topk_ids_NK = torch.topk(z_NV, top_k, dim=-1)
    token_z_N = z_NV.gather(-1, targets_N[:, None].to(z_NV.device))[:, 0]
    cand_NC = None
    if candidates_NC is not None:
        cand_NC = (z_NV.gather(-1, candidates_NC.to(z_NV.device)) - logz_N1).cpu()
    rest_N = exp_NV.scatter_(-1, topk_ids_NK, 0.0).sum(dim=-1)
    tail_N = max_N1[:, 0] + rest_N.log() - logz_N1[:, 0]
    if top_k < z_NV.shape[-1]:
        underflow = (rest_N == 0).nonzero()[:, 0]
        if underflow.numel():
            rows_MV = z_NV[underflow].scatter(-1, topk_ids_NK[underflow], float("-inf"))
            tail_N[underflow] = torch.logsumexp(rows_MV, dim=-1) - logz_N1[underflow, 0]
    return TeacherScores(
        topk_ids=topk_ids_NK.to(torch.int32).cpu(),
        topk_logprobs=(topk_z_NK - logz_N1).cpu(),
        token_logprobs=(token_z_N - logz_N1[:, 0]).cpu(),
        tail_logprobs=tail_N.cpu(),
        candidate_logprobs=cand_NC,
    )



# How far 1 - sum(top-k probs) can be trusted when the log-probs arrive rounded to float32:
# each p = exp(lp) carries a relative error of about |lp| x 6e-8 plus the rounding of the
# normalizer, so the sum is off by up to about 1e-6 for vocabularies of 10^5 tokens.
TAIL_RESOLUTION = 1e-6


def tail_from_topk(topk_logprobs_NK: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log(1 - sum(exp(topk_logprobs))) per row: the tail for a backend that returns only the
    top-k log-probs (vLLM), float32 [N].

    Summed in float64 and taken with log1p. When the rounded sum leaves less than
    TAIL_RESOLUTION the true tail cannot be told apart from rounding; the row then gets
    min(TAIL_RESOLUTION, (V - k) x p_k), a bound that holds since none of the V - k tokens
    outside the top-k is likelier than the k-th. A tail is -inf only when k is the vocabulary.
    """
    N, k = topk_logprobs_NK.shape
    if k >= vocab_size:
        return torch.full((N,), float("-inf"))
    lp_NK = topk_logprobs_NK.double()
    rest_N = -torch.expm1(torch.logsumexp(lp_NK, dim=-1))          # 1 - sum p, in float64
    bound_N = math.log(vocab_size - k) + lp_NK.min(dim=-1).values  # log((V - k) p_k)
    unsure_N = rest_N < TAIL_RESOLUTION
    tail_N = torch.where(unsure_N, torch.clamp(bound_N, max=math.log(TAIL_RESOLUTION)),
                         torch.log(rest_N.clamp(min=TAIL_RESOLUTION)))
    return tail_N.float()

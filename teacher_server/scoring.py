"""Turning teacher logits into what Score returns. Pure tensor functions, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distill.results import TeacherScores


@dataclass
class ScoreItem:
    """Sequences to score, validated, packed one after another: sequence i is
    token_ids[offsets[i]:offsets[i + 1]] (lengths[i] tokens) and its positions score_from[i] ..
    lengths[i] - 1 are scored. A backend answers with one TeacherScores holding every scored
    position, sequence by sequence, so a request of many short sequences costs its tokens, not a
    Python step per sequence."""

    token_ids: torch.Tensor            # int64 [T]: every sequence's ids one after another
    lengths: torch.Tensor              # int64 [B]
    score_from: torch.Tensor           # int64 [B]: 1 <= score_from[i] <= lengths[i] - 1
    top_k: int
    temperature: float
    candidate_ids: torch.Tensor | None  # int64 [N, C]: a row per scored position, or None
    tenant: str = ""                   # who sent it (a start is shared only within one tenant)

    def __post_init__(self):
        # read by the batcher and the servicer for every request: plain ints, computed once
        self.num_tokens = self.token_ids.numel()
        self.num_sequences = self.lengths.numel()
        self.num_scored = self.num_tokens - int(self.score_from.sum())
        self.padded_shape = (self.num_sequences, int(self.lengths.max()))

    @classmethod
    def pack(cls, sequences, score_from, top_k: int, temperature: float = 1.0,
             candidate_ids: list[torch.Tensor] | None = None) -> "ScoreItem":
        """Sequences (int64 [T_i] each) as one item; score_from one int for all or one per
        sequence; candidate_ids one [N_i, C] block per sequence, or None."""
        lengths = torch.tensor([len(seq) for seq in sequences])
        return cls(torch.cat(list(sequences)), lengths,
                   torch.as_tensor(score_from, dtype=torch.int64).expand(lengths.numel()).clone(),
                   top_k, temperature, None if candidate_ids is None else torch.cat(candidate_ids))

    @classmethod
    def one(cls, token_ids: torch.Tensor, score_from: int, top_k: int, temperature: float = 1.0,
            candidate_ids: torch.Tensor | None = None) -> "ScoreItem":
        """A single sequence."""
        return cls.pack([token_ids], [score_from], top_k, temperature,
                        None if candidate_ids is None else [candidate_ids])

    @property
    def rows(self) -> torch.Tensor:
        """Scored positions per sequence, int64 [B]."""
        return self.lengths - self.score_from

    def sequences(self) -> list[tuple[torch.Tensor, int]]:
        """(ids, score_from) per sequence: for a backend that takes sequences one by one."""
        return list(zip(self.token_ids.split(self.lengths.tolist()), self.score_from.tolist()))

    def _select(self, first: int, stop: int, offsets: list[int], row_offsets: list[int]) -> "ScoreItem":
        """Sequences first .. stop - 1 (views), given where each sequence's tokens and scored
        rows start (`_offsets` of lengths and rows)."""
        cands = self.candidate_ids
        return ScoreItem(self.token_ids[offsets[first]:offsets[stop]], self.lengths[first:stop],
                         self.score_from[first:stop], self.top_k, self.temperature,
                         None if cands is None else cands[row_offsets[first]:row_offsets[stop]], self.tenant)

    def _reorder(self, order: torch.Tensor, row_index: torch.Tensor) -> "ScoreItem":
        """The same sequences in the order `order` (a permutation of 0 .. B - 1); row_index is
        `_gather_index(self.rows, order)`, which the caller keeps too."""
        cands = self.candidate_ids
        return ScoreItem(self.token_ids[_gather_index(self.lengths, order)], self.lengths[order],
                         self.score_from[order], self.top_k, self.temperature,
                         None if cands is None else cands[row_index], self.tenant)

    def chunks(self, budget: int) -> tuple[list["ScoreItem"], torch.Tensor | None]:
        """Cut into runs of sequences whose padded size (count x longest) fits `budget` tokens,
        for forward passes of at most that many. A request that fits is returned whole. One that
        does not is sorted by length first, so each pass pads little; the second value is then
        the row order of the chunks' answers (see `unsort_rows`), else None. Budget 0: no limit."""
        count, longest = self.padded_shape
        if count * longest <= budget or count == 1 or not budget:
            return [self], None
        order = torch.sort(self.lengths, stable=True).indices
        row_order = _gather_index(self.rows, order)
        ordered = self._reorder(order, row_order)
        lengths = ordered.lengths
        offsets, row_offsets = _offsets(lengths), _offsets(ordered.rows)
        chunks, first = [], 0
        while first < count:
            # padded size of the runs first..j: nondecreasing in j (lengths are sorted)
            padded = lengths[first:] * torch.arange(1, count - first + 1)
            stop = first + max(1, int(torch.searchsorted(padded, budget, right=True)))
            chunks.append(ordered._select(first, stop, offsets, row_offsets))
            first = stop
        return chunks, row_order


def _offsets(sizes: torch.Tensor) -> list[int]:
    return [0, *sizes.cumsum(0).tolist()]


def _gather_index(sizes: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Indices that take the blocks of `sizes` (consecutive, block i has sizes[i] elements) in
    the order `order`: x[_gather_index(sizes, order)] is block order[0], then order[1], ..."""
    starts = sizes.cumsum(0) - sizes
    picked = sizes[order]
    within = torch.arange(int(picked.sum())) - (picked.cumsum(0) - picked).repeat_interleave(picked)
    return starts[order].repeat_interleave(picked) + within


def unsort_rows(scores: TeacherScores, row_order: torch.Tensor | None) -> TeacherScores:
    """The chunks' answers (rows in sorted-sequence order, `ScoreItem.chunks`) back in the
    request's order."""
    if row_order is None:
        return scores
    back = torch.empty_like(row_order)
    back[row_order] = torch.arange(row_order.numel())
    return scores.take(back)


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

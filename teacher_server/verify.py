"""Speculative accept/reject (Verify): the work item and the pure decision rule. No I/O, no grpc.

A student proposes G draft tokens x_0 .. x_{G-1} after a prefix; the teacher's distributions
p_0 .. p_G at the draft positions and the one after come from one forward pass over
prefix + draft, the same pass that serves Score (see backends/hf.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.results import VERIFY_MODES

MODES = tuple(VERIFY_MODES)


@dataclass
class VerifyItem:
    """One draft to verify, validated by the protocol layer."""

    prefix: torch.Tensor               # int64 [P], P >= 1
    draft: torch.Tensor                # int64 [G], G >= 1
    draft_probs: torch.Tensor | None   # float32 [G, V] full rows (the protocol expands the top-k
                                       # form); None outside speculative mode
    mode: str                          # one of MODES
    temperature: float                 # > 0, applied to the teacher's logits
    accept_top_k: int                  # K of mode "topk"
    top_k: int                         # k of the returned score arrays
    seed: int                          # per sequence: its answer does not depend on batch-mates
    tenant: str = ""                   # whose session_key it is
    session_key: str = ""              # "" when the caller keeps no session
    end_session: bool = False

    @property
    def token_ids(self) -> torch.Tensor:
        """prefix + draft, int64 [P + G]: what the decoder runs over."""
        return torch.cat([self.prefix, self.draft])

    @property
    def num_tokens(self) -> int:
        return self.prefix.numel() + self.draft.numel()

    @property
    def padded_shape(self) -> tuple[int, int]:
        return 1, self.num_tokens


def verify_draft(p_GV1: torch.Tensor, q_GV: torch.Tensor | None, draft_G: torch.Tensor, mode: str,
                 accept_top_k: int, generator: torch.Generator) -> tuple[int, int, torch.Tensor]:
    """Accept a prefix of the draft, then pick the token that follows it.

    p_GV1: the teacher's probabilities [G + 1, V] (temperature applied) at the G draft positions
    and the one after; q_GV: the student's [G, V] (speculative mode only); draft_G: int64 [G].
    Returns (n = num_accepted, next_token, accept_probs float32 [G]).

    speculative (Leviathan et al. 2023): a_i = min(1, p_i[x_i] / q_i[x_i]) (1 when
        q_i[x_i] = 0 < p_i[x_i], 0 when p_i[x_i] = 0); u_i ~ U[0, 1); accept while u_i < a_i.
        At the first rejection i the correction is drawn from norm(max(0, p_i - q_i)) (from p_i
        when that is all zero, which only rounding can cause); with all G accepted a bonus is
        drawn from p_G. Then every output token is distributed exactly as a draw from p.
    topk (SKD, Xu et al. 2024): a_i = 1 when x_i is among the accept_top_k most likely tokens of
        p_i (fewer than K tokens strictly more likely, so ties count in), else 0; correction and
        bonus are drawn from p.
    greedy: a_i = 1 when x_i = argmax p_i; correction and bonus are the argmax.
    accept_probs holds a_i for all G positions, also those after the first rejection.
    All draws come from `generator` (CPU), so a seed fixes the answer.
    """
    G = draft_G.numel()
    p_GV1 = p_GV1.double()       # float64: p - q and small ratios stay exact enough
    p_x_G = p_GV1[torch.arange(G), draft_G]
    if mode == "speculative":
        q_x_G = q_GV.double()[torch.arange(G), draft_G]
        ratio_G = (p_x_G / q_x_G.clamp(min=1e-300)).clamp(max=1.0)
        accept_G = torch.where(q_x_G > 0, ratio_G, (p_x_G > 0).double())
        keep_G = torch.rand(G, generator=generator, dtype=torch.float64) < accept_G
    elif mode == "topk":
        keep_G = (p_GV1[:G] > p_x_G[:, None]).sum(-1) < accept_top_k
        accept_G = keep_G.double()
    elif mode == "greedy":
        keep_G = draft_G == p_GV1[:G].argmax(-1)
        accept_G = keep_G.double()
    else:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {MODES}")
    rejected = (~keep_G).nonzero()
    n = int(rejected[0, 0]) if rejected.numel() else G
    target_V = p_GV1[n]
    if n < G and mode == "speculative":
        residual_V = (target_V - q_GV[n].double()).clamp(min=0)
        if residual_V.sum() > 0:
            target_V = residual_V
    if mode == "greedy":
        next_token = int(target_V.argmax())
    else:
        next_token = int(torch.multinomial(target_V, 1, generator=generator))  # needs no normalizing
    return n, next_token, accept_G.float()

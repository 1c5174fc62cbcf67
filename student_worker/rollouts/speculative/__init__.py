"""Speculative decoding with the student as the draft and the teacher as the target, via Verify.

Used three ways:
- SKD training (`skd` method): completions made by interleaving, `mode="topk"` (Xu et al. 2024);
  the teacher log-probs Verify returns are the training targets, so no second call is needed.
- DistillSpec's metric: how often the teacher accepts the student's drafts (`acceptance`).
- Plain speculative decoding (`python -m student_worker.rollouts.speculative`, the CLI in `__main__.py`):
  `mode="speculative"` makes the output distributed exactly as sampling from the teacher.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from student_worker.train.parallel import full_weights
from student_worker.rollouts.sampling import sample
from student_worker.seeding import derive_seed
from distill.client.teacher import Teacher
from distill.results import TeacherScores
from student_worker.rollouts.tokens import cut_at_eos


@dataclass
class SpeculativeResult:
    completion: list[int]                 # new tokens, ending with EOS when one was produced
    teacher: TeacherScores                # one row per completion token (see below)
    drafted: int = 0                      # draft tokens the teacher verified
    accepted: int = 0                     # ... and kept
    teacher_calls: int = 0                # Verify calls this sequence took part in


@dataclass
class _State:
    prompt: list[int]
    session_key: str
    tokens: list[int] = field(default_factory=list)
    rows: list[TeacherScores] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    calls: int = 0
    done: bool = False


def _rows(scores: TeacherScores, n: int) -> TeacherScores:
    """The first n rows of a Verify answer. The last kept row belongs to the correction token when
    the draft was cut: its top-k and tail are right (same context) but its token_logprob was the
    rejected draft's, so it becomes NaN unless the correction is among the top-k."""
    return TeacherScores(scores.topk_ids[:n], scores.topk_logprobs[:n], scores.token_logprobs[:n].clone(),
                         scores.tail_logprobs[:n], None)


def speculative_generate(model, teacher: Teacher, prompts: list[list[int]], *, gamma: int, max_new_tokens: int,
                         mode: str = "speculative", accept_top_k: int | None = None,
                         temperature: float = 1.0, eos_ids: list[int], pad_id: int, score_top_k: int = 20,
                         seed: int | None = None, sessions: bool = True) -> list[SpeculativeResult]:
    """Draft gamma tokens with the student, let the teacher keep a prefix and add one token, repeat
    until EOS or max_new_tokens. All sequences advance together, one batched Verify per round.
    Each sequence is a Verify session (a key of its own; `sessions=False`: none), so a teacher
    that keeps sessions runs only each round's new tokens; the round that surely ends a sequence
    says so."""
    with full_weights(model):   # FSDP: gathered once, so ranks may run different numbers of rounds
        call = secrets.token_hex(8)
        states = [_State(list(p), f"{call}-{i}") for i, p in enumerate(prompts)]
        round_ = 0
        while True:
            active = [s for s in states if not s.done]
            if not active:
                break
            budget = [max_new_tokens - len(s.tokens) for s in active]
            drafts = sample(model, [s.prompt + s.tokens for s in active], max_new_tokens=min(gamma, max(budget)),
                            temperature=0.0 if mode == "greedy" else temperature, eos_ids=eos_ids,
                            pad_id=pad_id, return_probs=mode == "speculative")
            outcomes = teacher.verify(
                [s.prompt + s.tokens for s in active], [d.token_ids for d in drafts],
                [d.probs for d in drafts] if mode == "speculative" else None, mode=mode, top_k=accept_top_k,
                temperature=temperature, seed=None if seed is None else derive_seed(seed, "verify", round_),
                score_top_k=score_top_k, session_keys=[s.session_key for s in active] if sessions else None,
                end_sessions=[left <= 1 for left in budget] if sessions else None)
            round_ += 1
            for s, d, out in zip(active, drafts, outcomes):
                n = out.num_accepted
                new = d.token_ids[:n] + [out.next_token]
                rows = _rows(out.scores, n + 1)
                if n < len(d.token_ids):   # the correction replaced draft n: its log-prob, if known
                    hit = (rows.topk_ids[n] == out.next_token).nonzero()
                    rows.token_logprobs[n] = rows.topk_logprobs[n, hit[0, 0]] if hit.numel() else math.nan
                s.drafted, s.accepted, s.calls = s.drafted + len(d.token_ids), s.accepted + n, s.calls + 1
                kept, finished = cut_at_eos(new[:max_new_tokens - len(s.tokens)], eos_ids)
                s.tokens += kept
                s.rows.append(_rows(rows, len(kept)))
                s.done = finished or len(s.tokens) >= max_new_tokens
        return [SpeculativeResult(s.tokens, TeacherScores.concat(s.rows), s.drafted, s.accepted, s.calls)
                for s in states]


def acceptance(results: list[SpeculativeResult]) -> dict:
    """DistillSpec's quantity (fraction of drafts the teacher keeps) and tokens per teacher call."""
    drafted = sum(r.drafted for r in results)
    calls = sum(r.teacher_calls for r in results)
    return {"acceptance_rate": sum(r.accepted for r in results) / max(drafted, 1),
            "tokens_per_call": sum(len(r.completion) for r in results) / max(calls, 1)}

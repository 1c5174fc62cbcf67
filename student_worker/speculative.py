"""Speculative decoding with the student as the draft and the teacher as the target, via Verify.

Used three ways:
- SKD training (`skd` method): completions made by interleaving, `mode="topk"` (Xu et al. 2024);
  the teacher log-probs Verify returns are the training targets, so no second call is needed.
- DistillSpec's metric: how often the teacher accepts the student's drafts (`acceptance`).
- Plain speculative decoding (`python -m student_worker.speculative`): `mode="speculative"`
  makes the output distributed exactly as sampling from the teacher.

    python -m student_worker.speculative --teacher 127.0.0.1:50051 --student DIR --prompt "37=" \\
        [--gamma 4] [--max-new-tokens 32] [--mode speculative|topk|greedy] [--compare]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import torch

from student_worker.sampling import sample
from student_worker.teacher_client import TeacherScores


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


def speculative_generate(model, teacher_call, prompts: list[list[int]], *, gamma: int, max_new_tokens: int,
                         mode: str = "speculative", accept_top_k: int | None = None,
                         temperature: float = 1.0, eos_ids: list[int], pad_id: int, score_top_k: int = 20,
                         seed: int | None = None) -> list[SpeculativeResult]:
    """Draft gamma tokens with the student, let the teacher keep a prefix and add one token, repeat
    until EOS or max_new_tokens. All sequences advance together, one batched Verify per round."""
    states = [_State(list(p)) for p in prompts]
    round_ = 0
    while True:
        active = [s for s in states if not s.done]
        if not active:
            break
        budget = [max_new_tokens - len(s.tokens) for s in active]
        drafts = sample(model, [s.prompt + s.tokens for s in active], max_new_tokens=min(gamma, max(budget)),
                        temperature=0.0 if mode == "greedy" else temperature, eos_ids=eos_ids,
                        pad_id=pad_id, return_probs=mode == "speculative")
        outcomes = teacher_call(
            "verify", [s.prompt + s.tokens for s in active], [d.token_ids for d in drafts],
            [d.probs for d in drafts] if mode == "speculative" else None, mode=mode, top_k=accept_top_k,
            temperature=temperature, seed=None if seed is None else seed * 100_003 + round_,
            score_top_k=score_top_k)
        round_ += 1
        for s, d, out in zip(active, drafts, outcomes):
            n = out.num_accepted
            new = d.token_ids[:n] + [out.next_token]
            rows = _rows(out.scores, n + 1)
            if n < len(d.token_ids):   # the correction replaced draft n: its log-prob, if known
                hit = (rows.topk_ids[n] == out.next_token).nonzero()
                rows.token_logprobs[n] = rows.topk_logprobs[n, hit[0, 0]] if hit.numel() else math.nan
            s.drafted, s.accepted, s.calls = s.drafted + len(d.token_ids), s.accepted + n, s.calls + 1
            stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
            keep = min(len(new) if stop is None else stop + 1, max_new_tokens - len(s.tokens))
            s.tokens += new[:keep]
            s.rows.append(_rows(rows, keep))
            s.done = stop is not None and stop < keep or len(s.tokens) >= max_new_tokens
    return [SpeculativeResult(s.tokens, _concat(s.rows), s.drafted, s.accepted, s.calls) for s in states]


def _concat(parts: list[TeacherScores]) -> TeacherScores:
    return TeacherScores(*(torch.cat([getattr(p, f) for p in parts]) for f in
                           ("topk_ids", "topk_logprobs", "token_logprobs", "tail_logprobs")), None)


def acceptance(results: list[SpeculativeResult]) -> dict:
    """DistillSpec's quantity (fraction of drafts the teacher keeps) and tokens per teacher call."""
    drafted = sum(r.drafted for r in results)
    calls = sum(r.teacher_calls for r in results)
    return {"acceptance_rate": sum(r.accepted for r in results) / max(drafted, 1),
            "tokens_per_call": sum(len(r.completion) for r in results) / max(calls, 1)}


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student_worker.teacher_client import TeacherClient

    parser = argparse.ArgumentParser(prog="python -m student_worker.speculative",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher address host:port")
    parser.add_argument("--student", required=True, help="draft model: Hugging Face folder or hub id")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--gamma", type=int, default=4, help="draft tokens per teacher call")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--mode", choices=["speculative", "topk", "greedy"], default="speculative")
    parser.add_argument("--top-k", type=int, default=5, help="K of --mode topk")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--compare", action="store_true",
                        help="also decode calling the teacher once per token, and report the speedup")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    model = AutoModelForCausalLM.from_pretrained(args.student).eval()
    client = TeacherClient(args.teacher)
    call = lambda method, *a, **kw: getattr(client, method)(*a, **kw)
    prompts = [tokenizer(p).input_ids for p in args.prompt]
    eos = [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    start = time.perf_counter()
    results = speculative_generate(model, call, prompts, gamma=args.gamma, max_new_tokens=args.max_new_tokens,
                                   mode=args.mode, accept_top_k=args.top_k, temperature=args.temperature,
                                   eos_ids=eos, pad_id=pad, seed=args.seed)
    seconds = time.perf_counter() - start
    for text, r in zip(args.prompt, results):
        print(f"{text!r} -> {tokenizer.decode(r.completion, skip_special_tokens=True)!r}")
    stats = acceptance(results)
    print(f"acceptance rate {stats['acceptance_rate']:.3f}, {stats['tokens_per_call']:.2f} tokens per "
          f"teacher call, {seconds:.2f} s")
    if args.compare:
        start = time.perf_counter()
        steps = teacher_decode(client, prompts, args.max_new_tokens, args.temperature, eos)
        plain = time.perf_counter() - start
        print(f"one teacher call per token: {steps} calls, {plain:.2f} s; speedup {plain / seconds:.2f}x")


def teacher_decode(client, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   eos_ids: list[int]) -> int:
    """The baseline: autoregressive decoding with one teacher call per token. Returns the calls."""
    seqs, calls = [list(p) for p in prompts], 0
    live = list(range(len(seqs)))
    for _ in range(max_new_tokens):
        if not live:
            break
        out = client.generate([seqs[i] for i in live], temperature=temperature, max_new_tokens=1)
        calls += 1
        for i, samples in zip(list(live), out):
            token = int(samples[0].token_ids[0])
            seqs[i].append(token)
            if token in eos_ids:
                live.remove(i)
    return calls


if __name__ == "__main__":
    main()

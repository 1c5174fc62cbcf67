"""The baseline speculative decoding is measured against: one teacher call per new token."""

from __future__ import annotations

from distill.client.teacher import Teacher


def teacher_decode(teacher: Teacher, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   eos_ids: list[int]) -> int:
    """Autoregressive decoding by the teacher, one Generate call of one token per step for the
    sequences still open. Returns the number of calls."""
    seqs, calls = [list(p) for p in prompts], 0
    live = list(range(len(seqs)))
    for _ in range(max_new_tokens):
        if not live:
            break
        out = teacher.generate([seqs[i] for i in live], temperature=temperature, max_new_tokens=1)
        calls += 1
        for i, samples in zip(list(live), out):
            token = int(samples[0].token_ids[0])
            seqs[i].append(token)
            if token in eos_ids:
                live.remove(i)
    return calls

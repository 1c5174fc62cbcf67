"""Which sequences of a forward pass share a start worth computing once.

On-policy batches repeat prompts: n samples of one prompt, the turns of one conversation. Their
shared start (the prompt) can run once, and every sequence then runs only its own rest on top of
that start's keys and values. Pure function, no model: the backend does the running.
"""

from __future__ import annotations

import torch

MIN_SHARED = 16          # a start shorter than this is not worth a pass of its own
MIN_SAVED_TOKENS = 128   # nor is a group that saves fewer token forwards in all


def shared_start(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens a and b (int64 [T]) have in common."""
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if differ.numel() else n


def shared_prefix_groups(sequences: list[torch.Tensor]) -> list[tuple[int, list[int]]]:
    """[(shared, members)]: groups of at least two sequences (indices into `sequences`, int64
    [T_i] each) whose first `shared` tokens are equal, each leaving every member at least one
    token of its own and saving at least MIN_SAVED_TOKENS token forwards; a sequence is in at most
    one group. Sequences sorted by their tokens put those with a common start next to each other;
    a group is a run of neighbours whose common start is at least MIN_SHARED."""
    order = sorted(range(len(sequences)), key=lambda i: sequences[i].tolist())
    groups, run, shared = [], [order[0]] if order else [], 0
    for prev, cur in zip(order, order[1:]):
        common = shared_start(sequences[prev], sequences[cur])
        if common >= MIN_SHARED:
            shared = min(shared or common, common)
            run.append(cur)
            continue
        groups.append((shared, run))
        run, shared = [cur], 0
    groups.append((shared, run))
    out = []
    for shared, members in groups:
        shared = min([shared, *(sequences[m].numel() - 1 for m in members)])
        if len(members) >= 2 and shared >= MIN_SHARED and shared * (len(members) - 1) >= MIN_SAVED_TOKENS:
            out.append((shared, sorted(members)))
    return out

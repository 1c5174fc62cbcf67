"""ringwalk: walk a ring of 10 nodes (0-9) from S to T in exactly L steps, writing every node.

    prompt "3736="  ->  start 3, target 7, 36 steps
    completion "456787878787878787878787878787878787"   (one of many)

Each step moves to a neighbour (n +- 1 mod 10), and the walk must stand on T after its L-th step,
then stop. L is 32-47, so an answer is 32-47 tokens; a walk of L steps from S can only end on a
node of S + L's parity (the ring is bipartite), so prompts have T - S - L even.

Why this task (issue 30; written before any method was run on it):

- Long horizon, each token depending on the earlier ones: the next node must neighbour the last
  one, and whether T is still reachable depends on where the walk stands and how many steps are
  left, which the writer has to count.
- Mistakes are recoverable: a step away from T costs nothing as long as the steps left cover the
  distance back, so after an error many valid continuations remain. A walk only fails for good by
  leaving the ring (a non-neighbour), by stepping so far that T is out of reach, or by stopping at
  the wrong length.
- An exact check (`check`), and a teacher that can be near perfect: the rule is simple for a
  model that knows its position.
- Training data with one way to answer (`train` completions are `canonical`: the short way to T,
  ties clockwise, then back and forth between T and T + 1), as fine-tuning data shows one way to
  answer. It is one rule, not a table: the 800 prompts (638 train, 72 dev, 90 test) follow it, so
  a student learns the rule rather than 638 strings. Off-policy training only ever shows the states on those walks (on
  the short path, or beside T); a student that steps elsewhere (T + 2, or away from T near the
  end) lands in states that data never shows, where only training on its own samples, scored by a
  teacher that knows every valid continuation, gives advice. The teacher's own training data is
  `random_walk`s: every valid move equally likely while T stays reachable.
- A student with too little capacity to be perfect: counting to 32-47 and turning back in time is
  what a small model gets wrong, late in the answer.

Splits: (S, T, L) prompts are assigned to train/dev/test by a hash (80/10/10), so dev and test
prompts were never trained on; a split's examples repeat its prompts in a seeded order.
"""

from __future__ import annotations

import hashlib
import random

NODES = 10
LENGTHS = range(32, 48)
_SPLITS = {"train": (21, range(0, 8)), "dev": (22, range(8, 9)), "test": (23, range(9, 10))}


def distance(a: int, b: int) -> int:
    d = (a - b) % NODES
    return min(d, NODES - d)


def prompts_of(split: str) -> list[tuple[int, int, int]]:
    """Every (start, target, length) of a split, in a fixed order."""
    _, buckets = _SPLITS[split]
    every = [(s, t, n) for s in range(NODES) for t in range(NODES) for n in LENGTHS if (t - s - n) % 2 == 0]
    return [p for p in every if hashlib.sha256(repr(p).encode()).digest()[0] % 10 in buckets]


def canonical(start: int, target: int, length: int) -> list[int]:
    """The training data's one answer: the short way to target (clockwise on a tie), then
    target + 1 and target in turn until the length is used up."""
    step = 1 if (target - start) % NODES <= NODES // 2 else -1
    walk, node = [], start
    while node != target:
        node = (node + step) % NODES
        walk.append(node)
    while len(walk) < length:
        walk += [(target + 1) % NODES, target]
    return walk


def random_walk(start: int, target: int, length: int, rng: random.Random) -> list[int]:
    """A walk whose every move is drawn uniformly among those that keep target reachable."""
    walk, node = [], start
    for left in range(length - 1, -1, -1):
        node = rng.choice([m for m in ((node + 1) % NODES, (node - 1) % NODES) if distance(m, target) <= left])
        walk.append(node)
    return walk


def parse(prompt: str) -> tuple[int, int, int] | None:
    text = prompt.removesuffix("=")
    if len(text) != 4 or not text.isdigit():
        return None
    return int(text[0]), int(text[1]), int(text[2:])


def is_walk(start: int, target: int, length: int, answer: str) -> bool:
    if len(answer) != length or not answer.isdigit():
        return False
    nodes = [start, *map(int, answer)]
    return all(distance(a, b) == 1 for a, b in zip(nodes, nodes[1:])) and nodes[-1] == target


class RingWalkTask:
    """Reference completions: random valid walks (the teacher's data; many answers per prompt)."""

    name = "ringwalk"

    def walk(self, start: int, target: int, length: int, rng: random.Random) -> list[int]:
        return random_walk(start, target, length, rng)

    def examples(self, split: str, n: int) -> list[dict]:
        seed, _ = _SPLITS[split]
        rng = random.Random(seed)
        prompts = prompts_of(split)
        out = []
        for _ in range(n):
            s, t, length = rng.choice(prompts)
            walk = self.walk(s, t, length, rng) if split == "train" else random_walk(s, t, length, rng)
            # dev and test completions are references only: evaluation reads the check
            out.append({"prompt": f"{s}{t}{length}=", "completion": "".join(map(str, walk))})
        return out

    def check(self, prompt: str, completion: str) -> float:
        parsed = parse(prompt)
        return float(parsed is not None and is_walk(*parsed, completion.strip()))


class CanonicalRingWalkTask(RingWalkTask):
    """ringwalk whose train split holds the canonical walk of each prompt (one way to answer);
    dev, test and the check are ringwalk's. The students' data."""

    name = "ringwalk-canonical"

    def walk(self, start: int, target: int, length: int, rng: random.Random) -> list[int]:
        return canonical(start, target, length)

"""Seeds of a run's random draws, derived from train.seed and what they are for.

Every stream is a pure function of (seed, purpose, keys...), so a resumed run replays it, ranks
and steps get their own, and two purposes never share one. numpy's SeedSequence does the mixing
(as the teacher server does for its per-sequence streams) instead of hand-picked primes.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed (fits torch, `random`, and the proto's uint64) for `purpose` at `keys`,
    e.g. derive_seed(cfg.train.seed, "sample", step, rank)."""
    # SeedSequence takes non-negative words: a negative train.seed wraps to its 64-bit pattern
    entropy = [seed % 2**64, zlib.crc32(purpose.encode()), *(k % 2**64 for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)

"""SessionCache: what a round may reuse, LRU under the byte budget, idle expiry, tenants apart; which
Score sequences share a start."""

import dataclasses

import torch

from teacher_server.prefixes import shared_start
from teacher_server.sessions import SessionCache, kv_bytes


def kv(tokens: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values [1, 1, tokens, 4] whose entries are their position (so a cut is visible)."""
    k = torch.arange(tokens, dtype=torch.float32)[None, None, :, None].expand(1, 1, tokens, 4).clone()
    return [(k, k.clone()) for _ in range(layers)]


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_shared_start():
    a = torch.tensor([1, 2, 3, 4])
    assert shared_start(a, torch.tensor([1, 2, 9, 4])) == 2
    assert shared_start(a, torch.tensor([1, 2])) == 2
    assert shared_start(a, torch.tensor([1, 2, 3, 4, 5])) == 4
    assert shared_start(a, torch.tensor([7])) == 0


def test_a_round_reuses_the_shared_start_up_to_its_limit_and_takes_the_entry():
    cache = SessionCache(1 << 20, idle_s=60)
    cache.put("t", "s", torch.tensor([1, 2, 3, 4, 5]), kv(5))
    reused, got = cache.take("t", "s", torch.tensor([1, 2, 3, 9, 9, 9]), limit=5)
    assert reused == 3 and got[0][0].shape == (1, 1, 3, 4) and got[1][1][0, 0, :, 0].tolist() == [0, 1, 2]
    assert len(cache) == 0 and cache.nbytes == 0          # taken: the round puts its own back
    cache.put("t", "s", torch.tensor([1, 2, 3, 4, 5]), kv(5))
    assert cache.take("t", "s", torch.tensor([1, 2, 3, 4, 5, 6]), limit=2)[0] == 2
    cache.put("t", "s", torch.tensor([1, 2, 3]), kv(3))
    assert cache.take("t", "s", torch.tensor([8, 2, 3]), limit=2) == (0, None)   # nothing shared


def test_tenants_never_share_an_entry():
    cache = SessionCache(1 << 20, idle_s=60)
    cache.put("alpha", "s", torch.tensor([1, 2, 3]), kv(3))
    assert cache.take("beta", "s", torch.tensor([1, 2, 3, 4]), limit=3) == (0, None)
    assert cache.take("alpha", "s", torch.tensor([1, 2, 3, 4]), limit=3)[0] == 3


def test_the_least_recently_used_go_first_and_the_budget_holds():
    one = kv_bytes(kv(10))
    cache = SessionCache(3 * one, idle_s=60)
    for name in "abc":
        cache.put("t", name, torch.arange(10), kv(10))
    assert cache.take("t", "a", torch.arange(11), limit=10)[0] == 10     # a is used again ...
    cache.put("t", "a", torch.arange(10), kv(10))
    cache.put("t", "d", torch.arange(10), kv(10))                        # ... so b goes
    assert cache.nbytes == 3 * one and set(key for _, key in cache.entries) == {"a", "c", "d"}
    cache.put("t", "huge", torch.arange(40), kv(40))                     # over the whole budget: not kept
    assert "huge" not in {key for _, key in cache.entries} and cache.nbytes == 3 * one


def test_idle_sessions_expire():
    clock = Clock()
    cache = SessionCache(1 << 20, idle_s=60, clock=clock)
    cache.put("t", "old", torch.arange(5), kv(5))
    clock.now = 50
    cache.put("t", "new", torch.arange(5), kv(5))
    clock.now = 70
    cache.expire()
    assert cache.take("t", "old", torch.arange(6), limit=5) == (0, None)
    assert cache.take("t", "new", torch.arange(6), limit=5)[0] == 5
    assert cache.nbytes == 0


def test_sequences_sharing_a_long_start_are_grouped():
    from teacher_server.prefixes import MIN_SAVED_TOKENS, shared_prefix_groups

    g = torch.Generator().manual_seed(0)
    prompt, other = torch.randint(0, 100, (200,), generator=g), torch.randint(0, 100, (200,), generator=g)
    answer = lambda n: torch.randint(100, 200, (n,), generator=g)  # noqa: E731
    seqs = [torch.cat([prompt, answer(5)]), torch.cat([other, answer(9)]), torch.cat([prompt, answer(7)]),
            prompt.clone(), torch.cat([other[:10], answer(3)]), torch.cat([prompt, answer(1)])]
    groups = shared_prefix_groups(seqs)
    # the prompt's four (one is the prompt alone: each keeps a token of its own, so 199 shared);
    # `other` has no partner, and other[:10] is too short a start
    assert groups == [(199, [0, 2, 3, 5])]
    assert shared_prefix_groups([prompt[:60].clone(), prompt[:61].clone()]) == []   # saves < MIN_SAVED_TOKENS
    assert 59 < MIN_SAVED_TOKENS
    assert shared_prefix_groups([]) == [] and shared_prefix_groups([prompt]) == []


def test_a_start_is_shared_only_within_one_tenant():
    from teacher_server.backends.hf import TransformersBackend, pad_packed
    from teacher_server.scoring import ScoreItem

    prompt = torch.arange(10, 110)
    seqs = [torch.cat([prompt, torch.tensor([i])]) for i in range(4)]
    items = [dataclasses.replace(ScoreItem.pack(part, 100, 1), tenant=tenant)
             for part, tenant in ((seqs[:2], "alpha"), (seqs[2:3], "beta"), (seqs[3:], "alpha"))]
    lengths = torch.cat([item.lengths for item in items])
    ids = pad_packed(torch.cat([item.token_ids for item in items]), lengths, 0)
    groups = TransformersBackend._shared_starts(items, [0, 2, 3, 4], ids, lengths)
    assert groups == [("alpha", 100, [0, 1, 3])]    # beta's copy of the prompt runs on its own

"""SessionCache: what a round may reuse, LRU under the byte budget, idle expiry, tenants apart."""

import torch

from teacher_server.sessions import SessionCache, kv_bytes, shared_start


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
    assert cache.take("t", "old", torch.arange(6), limit=5) == (0, None)
    assert cache.take("t", "new", torch.arange(6), limit=5)[0] == 5
    assert cache.nbytes == 0

"""Verify sessions: the KV caches of sequences being decoded, kept between rounds under a byte budget.

Speculative decoding sends the same sequence to Verify every round, a few tokens longer. Without
a cache each round runs the whole sequence again, so an n-token answer in rounds of G costs about
n^2 / 2G token forwards; with one, a round runs only its new tokens (the previous correction and
the new draft).

A session is (tenant, key), the key chosen by the caller (VerifySequence.session_key). Its entry
holds the tokens the model ran in the last round and their keys and values, layer by layer. A round
reuses the longest start its tokens share with the entry's (so a draft the teacher cut is never
reused past the cut), at most up to the position before its draft. The tokens a request sends are
the truth, the cache only a shortcut: an unknown, evicted or foreign key costs a full run, never a
different answer. Tenants never share an entry, so no tenant can probe another's cache.

Entries live under `budget_bytes` (least recently used evicted first) and are dropped after
`idle_s` without a round, when their round ends the sequence, or when the caller ends the session.
Taking an entry removes it (the forward pass extends it and puts it back), so the budget counts
each cache once.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import torch

from teacher_server.prefixes import shared_start

KV = list[tuple[torch.Tensor, torch.Tensor]]   # per layer: keys, values [1, heads, T, head_dim]
MAX_KEY_BYTES = 128


@dataclass
class Entry:
    tokens: torch.Tensor    # int64 [T] (CPU): what the model ran
    kv: KV                  # the model's keys and values over those tokens
    nbytes: int
    used: float             # clock time of its last round


def kv_bytes(kv: KV) -> int:
    return sum(t.numel() * t.element_size() for pair in kv for t in pair)


class SessionCache:
    def __init__(self, budget_bytes: int, idle_s: float, clock=time.monotonic):
        self.budget_bytes, self.idle_s, self.clock = budget_bytes, idle_s, clock
        self.entries: collections.OrderedDict[tuple[str, str], Entry] = collections.OrderedDict()  # LRU first
        self.nbytes = 0
        self.metrics = None     # teacher_server.metrics.Metrics, set by the server

    def _count(self, name: str, tenant: str, amount: float = 1, **labels) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels(tenant=tenant, **labels).inc(amount)

    def _remove(self, key: tuple[str, str]) -> Entry:
        entry = self.entries.pop(key)
        self.nbytes -= entry.nbytes
        if self.metrics is not None:
            self.metrics.session_bytes.set(self.nbytes)
        return entry

    def expire(self) -> None:
        """Drop the entries idle for longer than idle_s (the oldest are first)."""
        now = self.clock()
        while self.entries:
            key, entry = next(iter(self.entries.items()))
            if now - entry.used <= self.idle_s:
                break
            self._remove(key)
            self._count("session_evictions", key[0], reason="idle")

    def take(self, tenant: str, key: str, tokens: torch.Tensor, limit: int) -> tuple[int, KV | None]:
        """(r, the entry's keys and values over its first r tokens) for a round over `tokens`:
        r, at most `limit`, of them need not run again; (0, None) when nothing is reusable. The
        entry leaves the cache (`put` brings the round's back)."""
        entry = self.entries.get((tenant, key))
        if entry is None:
            self._count("session_misses", tenant)
            return 0, None
        self._remove((tenant, key))
        reused = min(shared_start(entry.tokens, tokens), limit)
        if reused == 0:
            self._count("session_misses", tenant)
            return 0, None
        self._count("session_hits", tenant)
        self._count("session_tokens_reused", tenant, reused)
        return reused, [(k[:, :, :reused], v[:, :, :reused]) for k, v in entry.kv]

    def put(self, tenant: str, key: str, tokens: torch.Tensor, kv: KV) -> None:
        """Keep `kv` (over `tokens`) for the session's next round, evicting the least recently used
        entries to stay within the budget (an entry larger than the whole budget is not kept)."""
        nbytes = kv_bytes(kv)
        if nbytes > self.budget_bytes:
            self._count("session_evictions", tenant, reason="budget")
            return
        while self.nbytes + nbytes > self.budget_bytes:
            old = next(iter(self.entries))
            self._remove(old)
            self._count("session_evictions", old[0], reason="budget")
        self.entries[tenant, key] = Entry(tokens, kv, nbytes, self.clock())
        self.nbytes += nbytes
        if self.metrics is not None:
            self.metrics.session_bytes.set(self.nbytes)

    def __len__(self) -> int:
        return len(self.entries)

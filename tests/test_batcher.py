"""The micro-batcher on its own: budgets, padding groups, queue limits, failures."""

import asyncio
from dataclasses import dataclass

import pytest

from teacher_server.batcher import Batcher
from teacher_server.errors import Overloaded


@dataclass
class Item:
    num_tokens: int


def run(coro):
    return asyncio.run(coro)


def test_merges_concurrent_requests_under_the_budget():
    batches = []

    def forward(items):
        batches.append([i.num_tokens for i in items])
        return [i.num_tokens * 10 for i in items]

    async def main():
        b = Batcher(forward, max_batch_tokens=100, max_wait_s=0.2, max_queued_tokens=10_000)
        b.start()
        results = await asyncio.gather(*(b.submit([Item(n)]) for n in (10, 30, 20, 40)))
        await b.close()
        return results

    assert run(main()) == [[100], [300], [200], [400]]
    # all four fit one budget of 100 real tokens but not one padded pass (4 x 40 > 100):
    # sorted by length and cut into passes that fit
    assert sorted(n for batch in batches for n in batch) == [10, 20, 30, 40]
    for batch in batches:
        assert batch == sorted(batch) and len(batch) * max(batch) <= 100


def test_oversized_item_runs_alone():
    batches = []

    async def main():
        b = Batcher(lambda items: batches.append(len(items)) or [0] * len(items),
                    max_batch_tokens=8, max_wait_s=0.0, max_queued_tokens=1000)
        b.start()
        await b.submit([Item(50), Item(3)])
        await b.close()

    run(main())
    assert batches == [1, 1]


def test_full_queue_is_refused_at_once():
    async def main():
        b = Batcher(lambda items: [0] * len(items), max_batch_tokens=10, max_wait_s=0,
                    max_queued_tokens=100)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit([Item(60), Item(60)])

    run(main())


def test_a_failing_batch_fails_its_callers_only():
    def forward(items):
        if any(i.num_tokens == 13 for i in items):
            raise RuntimeError("boom")
        return [1] * len(items)

    async def main():
        b = Batcher(forward, max_batch_tokens=100, max_wait_s=0, max_queued_tokens=1000)
        b.start()
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit([Item(13)])
        assert await b.submit([Item(5)]) == [1]
        await b.close()

    run(main())

"""The micro-batcher on its own: budgets, padding groups, queue limits, failures."""

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from teacher_server.batcher import Batcher
from teacher_server.errors import Expired, Overloaded
from teacher_server.metrics import Metrics
from teacher_server.tenants import Tenant, TenantSpec


@dataclass
class Item:
    """A single sequence of num_tokens tokens, or `rows` of them (a packed item)."""

    num_tokens: int
    rows: int = 1

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows, self.num_tokens // self.rows


@dataclass
class OwnedItem:
    num_tokens: int
    owner: str

    @property
    def padded_shape(self) -> tuple[int, int]:
        return 1, self.num_tokens


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


def test_a_pass_counts_every_row_of_a_packed_item():
    """Padded size is rows x widest: 4 rows of 10 and 3 rows of 10 share a pass (70 tokens); one
    row of 20 would make it 8 x 20 > 100, so it runs apart."""
    batches = []

    def forward(items):
        batches.append([(i.rows, i.num_tokens) for i in items])
        return [0] * len(items)

    async def main():
        b = Batcher(forward, max_batch_tokens=100, max_wait_s=0.2, max_queued_tokens=10_000)
        b.start()
        await asyncio.gather(*(b.submit([Item(n, rows)]) for n, rows in ((20, 1), (40, 4), (30, 3))))
        await b.close()

    run(main())
    assert sorted(sorted(batch) for batch in batches) == [[(1, 20)], [(3, 30), (4, 40)]]


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


def test_a_large_request_is_cut_into_passes_in_order():
    """One queue entry per request: its items are taken as runs that fill each pass's budget,
    in the request's order, and the outputs come back in that order."""
    batches = []

    def forward(items):
        batches.append([i.owner for i in items])
        return [i.owner for i in items]

    async def main():
        b = Batcher(forward, max_batch_tokens=10, max_wait_s=0.0, max_queued_tokens=1000)
        b.start()
        out = await b.submit([OwnedItem(2, str(i)) for i in range(11)])
        await b.close()
        return out

    assert run(main()) == [str(i) for i in range(11)]
    assert batches == [["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"], ["10"]]


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


# --- tenants: fair shares, quotas, callers that give up -------------------------------------

class Gate:
    """A forward function that blocks until opened and records what it ran."""

    def __init__(self):
        self.open, self.calls = threading.Event(), []

    def __call__(self, items):
        self.open.wait(10)
        self.calls.append([i.num_tokens for i in items])
        return [i.num_tokens for i in items]


def tenant(name, weight=1.0, **quota):
    return Tenant(TenantSpec(name=name, token_sha256="a" * 64, weight=weight, **quota))


def test_backlogged_tenants_are_served_in_proportion_to_their_weights():
    served = []

    async def main():
        heavy, light = tenant("heavy", weight=3), tenant("light", weight=1)
        b = Batcher(lambda items: [served.append(i.owner) or 0 for i in items],
                    max_batch_tokens=10, max_wait_s=0, max_queued_tokens=10**6)
        # both queue 200 requests of 10 tokens before the loop starts: full backlog
        work = [b.submit([OwnedItem(10, t.name)], t) for t in (heavy, light) for _ in range(200)]
        tasks = [asyncio.ensure_future(w) for w in work]
        await asyncio.sleep(0)
        b.start()
        await asyncio.gather(*tasks)
        await b.close()

    run(main())
    first = served[:200]          # while both still had a backlog
    assert first.count("heavy") == 150 and first.count("light") == 50


def test_a_light_tenant_overtakes_a_flooding_one():
    async def main():
        gate = Gate()
        b = Batcher(gate, max_batch_tokens=100, max_wait_s=0, max_queued_tokens=10**6)
        b.start()
        flood = [asyncio.ensure_future(b.submit([Item(100)], tenant("a"))) for _ in range(20)]
        await asyncio.sleep(0)            # the first flood request is taken; the rest queue
        light = asyncio.ensure_future(b.submit([Item(99)], tenant("b")))
        await asyncio.sleep(0)
        gate.open.set()
        await asyncio.gather(light, *flood)
        await b.close()
        return gate.calls

    calls = run(main())
    # b waited for the pass under way and one more flood request at most, not for all 19
    assert calls.index([99]) <= 2, calls


def test_tenant_queue_and_rate_limits_refuse_at_once():
    async def main():
        gate = Gate()
        b = Batcher(gate, max_batch_tokens=10, max_wait_s=0, max_queued_tokens=10**6)
        b.start()
        queued = tenant("q", max_queued_tokens=50)
        first = asyncio.ensure_future(b.submit([Item(40)], queued))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="max_queued_tokens of 50") as err:
            await b.submit([Item(20)], queued)
        assert err.value.reason == "tenant_queue_full" and err.value.retry_after_s > 0
        rated = tenant("r", tokens_per_minute=600)      # 10 tokens a second, 600 at once
        gate.open.set()
        await b.submit([Item(600)], rated)
        with pytest.raises(Overloaded, match="over its quota of 600 tokens per minute") as err:
            await b.submit([Item(30)], rated)
        assert err.value.reason == "rate" and 2.5 < err.value.retry_after_s <= 3.0
        await first
        await b.close()

    run(main())


def test_expired_and_cancelled_requests_never_reach_the_model():
    metrics = Metrics()

    async def main():
        gate = Gate()
        b = Batcher(gate, max_batch_tokens=100, max_wait_s=0, max_queued_tokens=10**6,
                    metrics=metrics)
        b.start()
        busy = asyncio.ensure_future(b.submit([Item(1)]))
        await asyncio.sleep(0)            # taken: the forward thread now waits on the gate
        with pytest.raises(Expired):
            await b.submit([Item(2), Item(3)], deadline=time.monotonic())  # expired while queued
        cancelled = asyncio.ensure_future(b.submit([Item(4)]))
        await asyncio.sleep(0)
        cancelled.cancel()
        gate.open.set()
        await busy
        assert await b.submit([Item(5)]) == [5]
        await b.close()
        return gate.calls

    assert run(main()) == [[1], [5]]
    dropped = {s.labels["reason"]: s.value for s in metrics.dropped.collect()[0].samples
               if s.name.endswith("_total")}
    assert dropped == {"deadline": 2, "cancelled": 1}


@pytest.mark.parametrize("in_flight", [1, 3])
def test_batches_in_flight_bounds_the_passes_running_at_once(in_flight):
    """Each item is its own pass (budget 10); a pass holds until `in_flight` passes run at once
    or 0.5 s passed. With 3 slots, three passes meet; with 1, never more than one runs."""
    running, most, lock = [0], [0], threading.Lock()
    met = threading.Barrier(in_flight)

    def forward(items):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            met.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass
        with lock:
            running[0] -= 1
        return [i.num_tokens for i in items]

    async def main():
        b = Batcher(forward, max_batch_tokens=10, max_wait_s=0.0, max_queued_tokens=1000,
                    batches_in_flight=in_flight)
        b.start()
        results = await asyncio.gather(*(b.submit([Item(10)]) for _ in range(6)))
        await b.close()
        return results

    assert run(main()) == [[10]] * 6
    assert most[0] == in_flight and not met.broken

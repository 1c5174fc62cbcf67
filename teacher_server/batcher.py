"""Micro-batching with weighted fair queuing: many clients' requests merged into forward passes,
tenants served in proportion to their weights.

Start-time fair queuing (Goyal et al., 1996), counted in tokens: a request gets the virtual start
tag max(virtual clock, its tenant's previous finish tag), and its tenant's finish tag moves on by
tokens / weight. Items are served in start-tag order (ties: arrival) and the clock is the tag of
the item served last. A tenant that floods the queue only pushes its own tags into the future; a
request from a tenant that was waiting its turn starts at the clock, so it is served as soon as
the forward pass under way ends. A request's items stay together and in order.

The batching loop takes items in tag order until `max_batch_tokens` real tokens are taken or
nothing else arrived within `max_wait_s` of the oldest, sorts them by width and cuts them into
forward passes whose padded size (rows x widest) fits the budget. An item is a block of rows
(`padded_shape`): a packed Score item holds many sequences (cut to fit a pass when parsed).
Forward passes run on dedicated threads, so the event loop keeps accepting requests while the
model works: one at a time by default; up to `batches_in_flight` at once for a backend that
batches across calls itself (vLLM's engine: the next batch joins the running one at its next
step).

Items whose caller gave up (cancelled, or its deadline passed) while queued are dropped before
any forward pass and counted.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import operator
import time
from typing import Callable, Protocol, Sequence

from teacher_server.errors import Expired, Overloaded, Unavailable
from teacher_server.metrics import Metrics
from teacher_server.tenants import OPEN, Tenant

log = logging.getLogger(__name__)

_DEADLINE_SLACK_S = 0.05   # a cancellation this close to the deadline counts as the deadline


class Item(Protocol):
    num_tokens: int                 # real tokens: what queues and budgets count
    padded_shape: tuple[int, int]   # (rows, width) it adds to a padded forward pass


class _Request:
    """One submit call, queued as one heap entry (start tag, arrival order, _Request): its items
    are taken in order from `taken` on, as many as fit a forward pass, so queueing costs per
    request, not per item. Outputs are filled in as forward passes finish; its caller waits on
    the one future (a future per item would cost more than a short item's share of the pass)."""

    __slots__ = ("future", "items", "sizes", "ends", "taken", "outputs", "remaining", "start",
                 "tenant", "deadline", "enqueued")

    def __init__(self, future: asyncio.Future, items: Sequence, sizes: list[int], start: float,
                 tenant: str, deadline: float | None):
        self.future = future
        self.items, self.sizes = items, sizes
        self.ends = list(itertools.accumulate(sizes))   # tokens of items[:i + 1]
        self.taken = 0                        # items[:taken] left the queue (taken or dropped)
        self.outputs: list = [None] * len(items)
        self.remaining = len(items)
        self.start = start                    # virtual start tag
        self.tenant = tenant
        self.deadline = deadline              # time.monotonic() seconds
        self.enqueued = time.monotonic()

    def tokens_before(self, i: int) -> int:
        return self.ends[i - 1] if i else 0

    def deliver(self, index: int, output) -> None:
        if not self.future.done():
            self.outputs[index] = output
            self.remaining -= 1
            if not self.remaining:
                self.future.set_result(self.outputs)


class Batcher:
    def __init__(self, run_batch: Callable[[list], list], *, max_batch_tokens: int,
                 max_wait_s: float, max_queued_tokens: int, metrics: Metrics | None = None,
                 batches_in_flight: int = 1):
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queued_tokens = max_queued_tokens
        self._metrics = metrics
        self._heap: list[tuple[float, int, _Request]] = []
        self._queued_tokens = 0
        self._tenant_tokens: collections.Counter[str] = collections.Counter()
        self._last_finish: dict[str, float] = {}
        self._clock = 0.0                 # virtual time: the start tag of the item served last
        self._order = itertools.count()
        self._tokens_per_s = 0.0          # recent forward throughput, for retry hints
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(batches_in_flight,
                                                               thread_name_prefix="forward")
        self._slots = asyncio.Semaphore(batches_in_flight)
        self._in_flight: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def queued_tokens(self) -> int:
        """Tokens accepted and not yet taken into a forward pass."""
        return self._queued_tokens

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, let queued work finish, stop the loop."""
        self._closed = True
        while self._queued_tokens:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _retry_hint(self, excess_tokens: int) -> float:
        """Seconds until `excess_tokens` more have left the queue at the recent pace."""
        return max(0.05, excess_tokens / self._tokens_per_s) if self._tokens_per_s else 0.25

    async def submit(self, items: Sequence[Item], tenant: Tenant | None = None,
                     deadline: float | None = None) -> list:
        """Queue `items` for `tenant` and wait for their outputs (same order). Refuses at once
        (Overloaded) when the server's or the tenant's queue limit or rate would be exceeded.
        `deadline` (time.monotonic() seconds): items still queued then are dropped (Expired)."""
        if self._closed:
            raise Unavailable("the teacher is shutting down; retry on another replica")
        name, weight = (tenant.name, tenant.weight) if tenant else (OPEN, 1.0)
        sizes = [item.num_tokens for item in items]
        tokens = sum(sizes)
        excess = self._queued_tokens + tokens - self.max_queued_tokens
        if excess > 0:
            raise Overloaded(
                f"the teacher's queue is full ({self._queued_tokens} tokens waiting, limit "
                f"{self.max_queued_tokens}); retry later or send smaller requests",
                retry_after_s=self._retry_hint(excess))
        if tenant and tenant.max_queued_tokens:   # (a request over it was refused as invalid)
            excess = self._tenant_tokens[name] + tokens - tenant.max_queued_tokens
            if excess > 0:
                raise Overloaded(
                    f"tenant {name!r} has {self._tenant_tokens[name]} tokens waiting and this "
                    f"request adds {tokens}, over its max_queued_tokens of "
                    f"{tenant.max_queued_tokens}; wait for answers before sending more",
                    retry_after_s=self._retry_hint(excess), reason="tenant_queue_full")
        if not items:
            return []
        if tenant:
            tenant.charge(tokens)
        start = max(self._clock, self._last_finish.get(name, 0.0))
        self._last_finish[name] = start + tokens / weight
        request = _Request(asyncio.get_running_loop().create_future(), items, sizes, start, name,
                           deadline)
        heapq.heappush(self._heap, (start, next(self._order), request))
        # done before all were taken (one failed or expired, or the caller gave up): the rest
        # need no forward pass
        request.future.add_done_callback(lambda _: self._drop(request))
        self._queued_tokens += tokens
        self._tenant_tokens[name] += tokens
        self._gauge(name)
        self._arrived.set()
        try:
            return await request.future
        except BaseException:
            request.future.cancel()
            raise

    def _settle(self, request: _Request, stop: int) -> int:
        """Take request.items[request.taken:stop] out of the queue's accounting (the caller
        updates the gauge); returns how many items that was."""
        first = request.taken
        if stop <= first:
            return 0
        tokens = request.tokens_before(stop) - request.tokens_before(first)
        request.taken = stop
        self._queued_tokens -= tokens
        self._tenant_tokens[request.tenant] -= tokens
        return stop - first

    def _gauge(self, tenant: str) -> None:
        if self._metrics is not None:
            self._metrics.queued_tokens.labels(tenant).set(self._tenant_tokens[tenant])

    def _drop(self, request: _Request) -> None:
        """A request is done: those of its items not yet taken are dropped (its caller gave up,
        its deadline passed, or another of its items failed)."""
        first = request.taken
        if not self._settle(request, len(request.items)) or self._metrics is None:
            return
        self._gauge(request.tenant)
        expired = request.deadline is not None and time.monotonic() >= request.deadline - _DEADLINE_SLACK_S
        sequences = sum(item.padded_shape[0] for item in request.items[first:])
        self._metrics.dropped.labels("deadline" if expired else "cancelled").inc(sequences)

    async def _loop(self) -> None:
        while True:
            if not self._queued_tokens:
                self._arrived.clear()
                await self._arrived.wait()
            # a free slot before taking: items are taken when they can run, not earlier (with
            # one slot, the next batch is chosen when the previous one has finished)
            async with self._slots:
                pass
            if self._queued_tokens < self.max_batch_tokens:
                await self._fill()
            for group in self._forward_groups(self._take()):
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._run(group))
                self._in_flight.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _fill(self) -> None:
        """Under the budget: give others up to max_wait from the oldest arrival to fill it."""
        oldest = min((r.enqueued for _, _, r in self._heap if r.taken < len(r.items)),
                     default=time.monotonic())
        deadline = oldest + self.max_wait_s
        while self._queued_tokens < self.max_batch_tokens:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[_Request, int]]:
        """Take items in tag order up to the token budget (at least one), dropping requests whose
        caller is gone or whose deadline has passed: (request, index) per item. A request's
        items are taken as a run, its budget share found by bisection."""
        taken, tokens, now = [], 0, time.monotonic()
        while self._heap:
            request = self._heap[0][2]
            future = request.future
            if request.deadline is not None and now >= request.deadline and not future.done():
                future.set_exception(Expired("the request's deadline passed while it waited "
                                             "in the teacher's queue"))
            first = request.taken
            if future.done() or first == len(request.items):
                heapq.heappop(self._heap)
                continue
            base = request.tokens_before(first)
            stop = bisect.bisect_right(request.ends, base + self.max_batch_tokens - tokens, first)
            if stop == first:                  # the next item does not fit
                if taken:
                    break
                stop = first + 1               # an item over the budget runs alone
            taken += zip(itertools.repeat(request), range(first, stop))
            tokens += request.tokens_before(stop) - base
            self._settle(request, stop)
            self._clock = request.start
            if stop < len(request.items):      # the budget is full
                break
            heapq.heappop(self._heap)
        for tenant in {request.tenant for request, _ in taken}:
            self._gauge(tenant)
        return taken

    def _forward_groups(self, taken: list[tuple[_Request, int]]) -> list[list]:
        """Sort by width and cut into runs whose padded size (rows x widest) fits the budget."""
        groups: list[list] = []
        rows = 0                          # of the last group
        shaped = [(*request.items[i].padded_shape, request, i) for request, i in taken]
        for entry in sorted(shaped, key=operator.itemgetter(1)):
            if groups and (rows + entry[0]) * entry[1] <= self.max_batch_tokens:
                groups[-1].append(entry[2:])
                rows += entry[0]
            else:
                groups.append([entry[2:]])
                rows = entry[0]
        return groups

    async def _run(self, group: list[tuple[_Request, int]]) -> None:
        start = time.monotonic()
        running = (self._metrics.forward_running.track_inprogress() if self._metrics
                   else contextlib.nullcontext())
        try:
            with running:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_batch, [r.items[i] for r, i in group])
        except Exception as exc:  # one bad batch must not stop the loop
            log.exception("forward pass failed for %d sequences",
                          sum(r.items[i].padded_shape[0] for r, i in group))
            for request in {r for r, _ in group}:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        tokens_of = collections.Counter()     # tokens of each request in this pass
        for (request, i), out in zip(group, outputs):
            request.deliver(i, out)
            tokens_of[request] += request.sizes[i]
        elapsed = time.monotonic() - start
        tokens = sum(tokens_of.values())
        rate = tokens / max(elapsed, 1e-6)
        self._tokens_per_s = 0.8 * self._tokens_per_s + 0.2 * rate if self._tokens_per_s else rate
        if self._metrics is not None:
            m = self._metrics
            m.forward_latency.observe(elapsed)
            shapes = [r.items[i].padded_shape for r, i in group]
            rows = sum(n for n, _ in shapes)
            m.batch_sequences.observe(rows)
            m.batch_tokens.observe(rows * shapes[-1][1])   # sorted: the last is the widest
            m.tokens_forward.inc(tokens)
            for request, size in tokens_of.items():   # once per request, not per item
                m.queue_wait.labels(request.tenant).observe(start - request.enqueued)
                m.tenant_tokens.labels(request.tenant).inc(size)

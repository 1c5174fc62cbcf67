"""Micro-batching: concurrent requests from many clients merged into forward passes.

Each request's items (sequences) join one FIFO queue. The batching loop takes items from the head
until `max_batch_tokens` real tokens are taken or nothing else arrived within `max_wait_s` of the
oldest, sorts them by length and cuts them into forward passes whose padded size
(count x longest) fits the budget. Forward passes run one at a time on a dedicated thread, so
the event loop keeps accepting requests while the model works.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from teacher_server.errors import Overloaded, Unavailable
from teacher_server.metrics import Metrics

log = logging.getLogger(__name__)


class Item(Protocol):
    num_tokens: int


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, run_batch: Callable[[list], list], *, max_batch_tokens: int,
                 max_wait_s: float, max_queued_tokens: int, metrics: Metrics | None = None):
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queued_tokens = max_queued_tokens
        self._metrics = metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_tokens = 0
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, let queued work finish, stop the loop."""
        self._closed = True
        while self._queue:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Item]) -> list:
        """Queue `items` and wait for their outputs (same order)."""
        if self._closed:
            raise Unavailable("the teacher is shutting down; retry on another replica")
        tokens = sum(item.num_tokens for item in items)
        if self._queued_tokens + tokens > self.max_queued_tokens:
            raise Overloaded(
                f"the teacher's queue is full ({self._queued_tokens} tokens waiting, limit "
                f"{self.max_queued_tokens}); retry later or send smaller requests")
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future()) for item in items]
        self._queue.extend(pending)
        self._queued_tokens += tokens
        self._arrived.set()
        return await asyncio.gather(*(p.future for p in pending))

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            # Give others up to max_wait from the oldest arrival to fill the budget.
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued_tokens < self.max_batch_tokens:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            for group in self._forward_groups(self._take()):
                await self._run(group)

    def _take(self) -> list[_Pending]:
        """Pop items from the head of the queue up to the token budget (at least one)."""
        taken, tokens = [], 0
        while self._queue:
            head = self._queue[0]
            if taken and tokens + head.item.num_tokens > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= head.item.num_tokens
            if head.future.done():      # the caller gave up (cancelled / deadline)
                continue
            taken.append(head)
            tokens += head.item.num_tokens
        return taken

    def _forward_groups(self, taken: list[_Pending]) -> list[list[_Pending]]:
        """Sort by length and cut into runs whose padded size fits the budget."""
        groups: list[list[_Pending]] = []
        for p in sorted(taken, key=lambda p: p.item.num_tokens):
            if groups and (len(groups[-1]) + 1) * p.item.num_tokens <= self.max_batch_tokens:
                groups[-1].append(p)
            else:
                groups.append([p])
        return groups

    async def _run(self, group: list[_Pending]) -> None:
        start = time.monotonic()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [p.item for p in group])
        except Exception as exc:  # one bad batch must not stop the loop
            log.exception("forward pass failed for %d sequences", len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, out in zip(group, outputs):
            if not p.future.done():
                p.future.set_result(out)
        if self._metrics is not None:
            m = self._metrics
            m.forward_latency.observe(time.monotonic() - start)
            m.batch_sequences.observe(len(group))
            m.batch_tokens.observe(len(group) * max(p.item.num_tokens for p in group))
            m.tokens_forward.inc(sum(p.item.num_tokens for p in group))
            for p in group:
                m.queue_wait.observe(start - p.enqueued)

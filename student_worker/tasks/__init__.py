"""Built-in tasks: a generator of (prompt, completion) examples plus an exact check.

A task is referenced by name in `data.source`; its check is the verifier that seqkd's best-of-n
keeps answers by, rlkd's reward, and evaluation's accuracy.
"""

from __future__ import annotations

import random
import string
from typing import Protocol


class Task(Protocol):
    name: str

    def examples(self, split: str, n: int) -> list[dict]:
        """n examples {"prompt": str, "completion": str} of a split (train/dev/test)."""

    def check(self, prompt: str, completion: str) -> float:
        """1.0 when the completion is correct for the prompt, else 0.0."""


_SPLIT_SEEDS = {"train": 1, "dev": 2, "test": 3}


class ReverseTask:
    """Reverse a short lowercase word: 'rev abc=' -> 'cba'. A smoke-test task for tiny models."""

    name = "reverse"

    def __init__(self, min_len: int = 2, max_len: int = 6):
        self.min_len, self.max_len = min_len, max_len

    def examples(self, split: str, n: int) -> list[dict]:
        rng = random.Random(_SPLIT_SEEDS[split])
        out = []
        for _ in range(n):
            word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(self.min_len, self.max_len)))
            out.append({"prompt": f"rev {word}=", "completion": word[::-1]})
        return out

    def check(self, prompt: str, completion: str) -> float:
        word = prompt.removeprefix("rev ").removesuffix("=")
        return float(completion.strip() == word[::-1])


from student_worker.tasks.digsum import DigsumTask, OneAnswerDigsumTask  # noqa: E402  (the registry needs Task first)
from student_worker.tasks.ringwalk import CanonicalRingWalkTask, RingWalkTask  # noqa: E402

TASKS: dict[str, Task] = {task.name: task for task in (ReverseTask(), DigsumTask(), OneAnswerDigsumTask(),
                                                       RingWalkTask(), CanonicalRingWalkTask())}


def register_task(task: Task) -> None:
    TASKS[task.name] = task

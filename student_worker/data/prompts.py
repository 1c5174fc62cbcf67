"""Prompts (and reference completions) for training, sharded over workers.

Sources: a built-in task name, a JSONL file or a local Hugging Face `datasets` folder
(`save_to_disk`) whose records hold either `prompt` (and optional `completion`) strings or chat
`messages` (student_worker.data.chat: rendered by the tokenizer's chat template). Prompts longer than
data.max_prompt_tokens are left out and counted (`filtered`). Batches are a pure function of (step, rank), so
a resumed run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.results import TeacherScores
from student_worker.config import DataConfig
from student_worker.data.chat import render
from student_worker.rollouts.tokens import eos_ids_of
from student_worker.seeding import derive_seed
from student_worker.tasks import TASKS, Task


@dataclass
class Example:
    prompt: str
    completion: str | None
    prompt_ids: list[int]
    completion_ids: list[int] | None   # reference completion, ending with EOS
    teacher_scores: TeacherScores | None = None   # the completion's, from a distill-score cache
    teacher: str | None = None                    # with named teachers: the one that scores it


def _read_records(cfg: DataConfig) -> tuple[list[dict], Task | None]:
    if cfg.source in TASKS:
        task = TASKS[cfg.source]
        return task.examples(cfg.split, cfg.num_examples), task
    path = Path(cfg.source)
    if path.suffix == ".jsonl" and path.is_file():
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()], None
    if path.is_dir():
        import datasets  # optional: only this source needs it

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[cfg.split]
        return list(ds), None
    raise ValueError(f"data.source {cfg.source!r} is not a built-in task ({sorted(TASKS)}), "
                     "a .jsonl file or a datasets folder")


def example_from_record(cfg: DataConfig, tokenizer, rec: dict, eos_ids: list[int], where: str) -> Example:
    """One record (chat messages, or a prompt and an optional completion) as the worker tokenizes it."""
    if cfg.messages_field in rec:
        prompt, prompt_ids, completion, completion_ids = render(
            tokenizer, rec[cfg.messages_field], use_template=cfg.chat_template,
            system_prompt=cfg.system_prompt, template_kwargs=cfg.chat_template_kwargs, eos_ids=eos_ids)
    elif cfg.prompt_field in rec:
        prompt, completion = rec[cfg.prompt_field], rec.get(cfg.completion_field)
        prompt_ids = tokenizer(prompt).input_ids
        completion_ids = None
        if completion is not None:
            completion_ids = tokenizer(completion, add_special_tokens=False).input_ids + [eos_ids[0]]
    else:
        raise ValueError(f"{where} has neither a {cfg.prompt_field!r} nor a {cfg.messages_field!r} field")
    if not prompt_ids:
        raise ValueError(f"{where}: the prompt has no tokens")
    teacher = rec.get(cfg.teacher_field)
    return Example(prompt, completion, prompt_ids, completion_ids, teacher=None if teacher is None else str(teacher))


class PromptData:
    def __init__(self, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                 eos_ids: list[int] | None = None):
        records, self.task = _read_records(cfg)
        if not records:
            raise ValueError(f"data.source {cfg.source!r} has no examples")
        eos_ids = eos_ids or eos_ids_of(tokenizer)
        self.examples, self.filtered = [], 0
        for i, rec in enumerate(records):
            example = example_from_record(cfg, tokenizer, rec, eos_ids, f"example {i} of {cfg.source}")
            if cfg.max_prompt_tokens is not None and len(example.prompt_ids) > cfg.max_prompt_tokens:
                self.filtered += 1
            else:
                self.examples.append(example)
        if not self.examples:
            raise ValueError(f"all {len(records)} prompts of {cfg.source!r} are longer than "
                             f"data.max_prompt_tokens={cfg.max_prompt_tokens}")
        self.batch_size, self.rank, self.world_size, self.seed = cfg.batch_size, rank, world_size, seed

    def batch(self, step: int) -> list[Example]:
        """The examples of this rank at `step`: epochs are fresh permutations of the data set."""
        n = len(self.examples)
        per_step = self.batch_size * self.world_size
        start = step * per_step + self.rank * self.batch_size
        out = []
        for index in range(start, start + self.batch_size):
            epoch, offset = divmod(index, n)
            out.append(self.examples[self._order(epoch)[offset]])
        return out

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> list[int]:
        return torch.randperm(len(self.examples),
                              generator=torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))).tolist()

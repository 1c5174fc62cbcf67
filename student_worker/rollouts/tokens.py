"""Token-list helpers shared by sampling, speculative decoding, the target grid and evaluation."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch


def pad_id_of(tokenizer, eos_ids: Sequence[int]) -> int:
    """The tokenizer's pad id; models without one pad with EOS (padding is masked out anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] long ids and attention mask (1 on real tokens). side "right": sequences start at
    column 0 (training); "left": they all end at the last column (a batched KV-cache decode)."""
    lengths_B = torch.tensor([len(s) for s in seqs])
    width = int(lengths_B.max())
    cols_T = torch.arange(width)
    # one boolean mask and one flat copy instead of a tensor per row: row-major order of the
    # mask's True cells is the sequences' tokens one after another
    real_BT = cols_T < lengths_B[:, None] if side == "right" else cols_T >= width - lengths_B[:, None]
    ids_BT = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    ids_BT[real_BT] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)
    mask_BT = real_BT.long()
    return ids_BT, mask_BT


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first EOS, and whether there was one."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return list(tokens[:i + 1]), True
    return list(tokens), False


def eos_ids_of(tokenizer, model=None, declared: Sequence[int] = ()) -> list[int]:
    """Every end-of-sequence id: `declared` (the teacher's Info), the model's generation config
    (an id or a list), the tokenizer's EOS and the chat template's end-of-turn token."""
    from student_worker.data.chat import end_of_turn_id

    generation = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    generation = [generation] if isinstance(generation, int) else list(generation or [])
    found = [*declared, *generation, tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return list(dict.fromkeys(i for i in found if i is not None))

"""Gradient accumulation over micro-batches whose sum is the full batch's gradient.

A step's batch is split into micro-batches of `train.micro_batch_size` sequences; each runs
forward and backward on its own, and the gradients add up in `.grad`. The sum equals the full
batch's gradient because every completion token carries its weight w_m from the *whole* batch
(chunked_loss.reduction_weights with counts over all ranks, all-reduced once before the first
backward): a per-token mean over the batch and all ranks, never a mean of micro-batch means.
DDP's all-reduce (FSDP's reduce-scatter) runs once, after the last micro-batch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from student_worker.losses.chunked_loss import TokenLoss, chunked_loss, completion_hidden


def micro_batches(mask_BS: torch.Tensor, attention_BT: torch.Tensor, size: int) -> Iterator[tuple[slice, slice, int]]:
    """(rows, their completion positions in [M] order, width) per micro-batch of `size` rows
    (0: one micro-batch). width is the longest sequence among the rows: the trailing padding
    columns beyond it are cut (they change no value at the positions before them)."""
    B = mask_BS.shape[0]
    size = size or B
    ends_B = mask_BS.sum(-1).cumsum(0).tolist()   # positions in [M] order end after each row
    lengths_B = attention_BT.sum(-1).tolist()
    for start in range(0, B, size):
        stop = min(start + size, B)
        first = ends_B[start - 1] if start else 0
        yield slice(start, stop), slice(first, ends_B[stop - 1]), int(max(lengths_B[start:stop]))


@contextlib.contextmanager
def gradient_sync(model, enabled: bool):
    """Let DDP / FSDP2 reduce gradients across ranks in this backward, or hold them locally."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):   # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
    yield


def accumulate_gradients(model, head, input_ids_BT: torch.Tensor, attention_BT: torch.Tensor,
                         mask_BS: torch.Tensor, token_loss: TokenLoss, weights_M: torch.Tensor,
                         extras_M: dict[str, torch.Tensor], *, micro_batch_size: int = 0,
                         chunk_size: int = 128, autocast_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of Σ_m w_m · l_m over micro-batches; gradients add up in `.grad`.

    model: the training model (DDP / FSDP wrapper or plain). head: its output embedding.
    input_ids_BT, attention_BT: right-padded batch. mask_BS: completion targets. weights_M,
    extras_M: over the batch's completion positions (see chunked_loss). autocast_dtype:
    torch.bfloat16 for mixed precision (master weights stay float32; the loss is float32).
    Returns (the loss, detached; the student's log-probs of the targets [M], detached).
    """
    targets_M = input_ids_BT[:, 1:][mask_BS]
    parts = list(micro_batches(mask_BS, attention_BT, micro_batch_size))
    total, token_logprobs = torch.zeros((), dtype=torch.float64, device=weights_M.device), []
    for i, (rows, positions, width) in enumerate(parts):
        with gradient_sync(model, enabled=i == len(parts) - 1):
            with torch.autocast(input_ids_BT.device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                hidden_MH = completion_hidden(model, input_ids_BT[rows, :width], attention_BT[rows, :width],
                                              mask_BS[rows, :width - 1])
                loss, token_lp_M = chunked_loss(hidden_MH, head, token_loss, targets_M[positions],
                                                weights_M[positions],
                                                {k: v[positions] for k, v in extras_M.items()}, chunk_size)
            loss.backward()
        total += loss.detach().double()
        token_logprobs.append(token_lp_M)
    return total, torch.cat(token_logprobs)

"""A fixed ragged batch (uneven prompts and completions, a 1-token completion among them), random
teacher top-k scores for it, the unchunked float64 reference loss the chunked paths must equal, and
one training step on it."""

from __future__ import annotations

import torch

from bench.loss_memory import full_batch_loss
from distill.results import TeacherScores
from student_worker.config import RunConfig
from student_worker.losses import chunked_loss as C
from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from student_worker.train.micro_batches import accumulate_gradients

K = 5
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [20, 21], [30, 31, 32, 33]]
COMPLETIONS = [[40, 41, 42, 43], [50], [60, 61, 62, 63, 64, 65, 66], [70, 71, 72]]


def teacher_scores(vocab: int, seed: int = 1) -> list[TeacherScores]:
    """Top-K teacher scores of COMPLETIONS from random distributions over `vocab` ids."""
    g = torch.Generator().manual_seed(seed)
    scores = []
    for c in COMPLETIONS:
        logprobs_NV = torch.log_softmax(3 * torch.randn(len(c), vocab, generator=g), -1)
        top_NK, ids_NK = logprobs_NV.topk(K, -1)
        tail_N = torch.log1p(-top_NK.exp().sum(-1))
        token_N = logprobs_NV.gather(-1, torch.tensor(c)[:, None])[:, 0]
        scores.append(TeacherScores(ids_NK, top_NK.float(), token_N.float(), tail_N.float(), None))
    return scores


def method_config(name: str, **fields) -> RunConfig:
    """A run configuration that only sets the method (paths are placeholders)."""
    return RunConfig.model_validate({"student": {"path": "-"}, "data": {"source": "-"},
                                     "method": {"name": name, **fields}})


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def unchunked_reference(model, cfg, rollout, scores):
    """The unchunked reference: full-batch log-softmax, full_batch_loss (kept in float64);
    returns (loss, gradients)."""
    model.zero_grad(set_to_none=True)
    batch = token_batch(rollout, pad_id=0)
    logits_BSV = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
    teacher = teacher_batch(scores, rollout, batch.targets_BS.shape[1])
    loss = full_batch_loss(cfg, torch.log_softmax(logits_BSV, -1), batch, teacher, rollout)
    loss.backward()
    return loss.detach(), grads_of(model)


def reverse_kl_step(model, train_model, optimizer, rows=slice(None), world=1, micro_batch_size=2) -> float:
    """One optimizer step of reverse KL to teacher_scores on sequences `rows` (chunks of 3
    positions); returns the loss. `train_model` is `model` or its DDP/FSDP wrapper."""
    rollout = Rollout(PROMPTS[rows], COMPLETIONS[rows], "student")
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(teacher_scores(model.config.vocab_size)[rows], rollout, batch.targets_BS.shape[1])
    weights_M = C.reduction_weights(batch.mask_BS, "token", C.completion_counts(batch.mask_BS), world)
    loss, _ = accumulate_gradients(train_model, model.get_output_embeddings(), batch.input_ids_BT,
                                   batch.attention_BT, batch.mask_BS, C.topk_divergence("reverse_kl"), weights_M,
                                   C.topk_extras(teacher, batch.mask_BS), micro_batch_size=micro_batch_size,
                                   chunk_size=3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item() / world

"""The loss over completion tokens, with memory bounded by a chunk of positions, not the batch.

Every method's loss is a weighted sum of a per-token loss over the batch's completion positions m:

    loss = Σ_m w_m · l(log q_m, target_m, teacher_m)        log q_m = log_softmax(head(h_m))  [V]

h_m [H] is the decoder's last hidden state at the position that predicts target m; the weights
w_m carry the reduction (see `reduction_weights`). Computed naively, the head's logits and the
log-softmax exist for every position of the batch at once (several float32 [B, T, V] tensors, with
their gradients). `chunked_loss` computes logits, log-softmax, l and their gradients for
`chunk_size` positions at a time and keeps only the gradients with respect to its inputs (the
hidden states and the head's weights): peak memory is a few chunk_size × V floats, and nothing
is recomputed (the way Liger-Kernel's fused linear cross-entropy works). Only completion positions
are computed; prompt and padding rows never are.

A per-token loss is a function `l(logprobs_NV, targets_N, **extras_N) -> values_N` ([N] per
position); extras are per-position tensors ([M, ...], gathered once per batch by
`topk_extras` / `policy_gradient_extras`) that `chunked_loss` slices with the positions. The three kinds of today's
methods: `nll`, `topk_divergence`, `policy_gradient`.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.distributed as dist

from student_worker.distributed import collective_device
from student_worker.losses import divergences as D


class TokenLoss(Protocol):
    def __call__(self, logprobs_NV: torch.Tensor, targets_N: torch.Tensor,
                 **extras_N: torch.Tensor) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------
# the per-token losses of today's methods


def _token_logprobs(logprobs_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    return logprobs_NV.gather(-1, targets_N[:, None])[:, 0]


def nll(logprobs_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """Cross-entropy: −log q(target). [N, V], [N] -> [N]."""
    return -_token_logprobs(logprobs_NV, targets_N)


def topk_divergence(name: str, beta: float = 0.5, alpha: float = 0.1) -> TokenLoss:
    """The divergence `name` (divergences.DIVERGENCES) to the teacher's top-k + tail.
    Extras: topk_ids_NK, topk_logprobs_NK, tail_logprobs_N."""
    def loss(logprobs_NV, targets_N, *, topk_ids_NK, topk_logprobs_NK, tail_logprobs_N):
        return D.divergence(name, logprobs_NV[None], teacher_topk_ids_BTK=topk_ids_NK[None],
                            teacher_topk_logprobs_BTK=topk_logprobs_NK[None],
                            teacher_tail_logprobs_BT=tail_logprobs_N[None], beta=beta, alpha=alpha)[0]
    return loss


def policy_gradient(kl_coef: float) -> TokenLoss:
    """REINFORCE with the teacher as KL anchor: −A · log q(target), where the advantage
    A = sequence_advantage − kl_coef · (log q − log p)(target) is a constant (detached).
    Extras: teacher_token_logprobs_N, sequence_advantage_N (reward minus baseline, or 0)."""
    def loss(logprobs_NV, targets_N, *, teacher_token_logprobs_N, sequence_advantage_N):
        token_lp_N = _token_logprobs(logprobs_NV, targets_N)
        kl_N = D.sampled_reverse_kl(token_lp_N.detach(), teacher_token_logprobs_N)
        advantage_N = sequence_advantage_N - kl_coef * kl_N
        return -advantage_N * token_lp_N
    return loss


# --------------------------------------------------------------------------------------------
# what the loss needs, gathered at completion positions


def topk_extras(teacher, mask_BS: torch.Tensor) -> dict[str, torch.Tensor]:
    """`topk_divergence`'s extras from a rollout.TeacherBatch."""
    return {"topk_ids_NK": teacher.topk_ids_BSK[mask_BS], "topk_logprobs_NK": teacher.topk_logprobs_BSK[mask_BS],
            "tail_logprobs_N": teacher.tail_logprobs_BS[mask_BS]}


def policy_gradient_extras(teacher, mask_BS: torch.Tensor, rewards_B: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """`policy_gradient`'s extras: the teacher's token log-probs and each sequence's reward minus
    the batch mean (the baseline, over the whole batch of this rank, never a micro-batch)."""
    advantage_B = (torch.zeros(mask_BS.shape[0]) if rewards_B is None
                   else rewards_B.double() - rewards_B.double().mean())
    advantage_BS = advantage_B.to(mask_BS.device)[:, None].expand(mask_BS.shape)
    return {"teacher_token_logprobs_N": teacher.token_logprobs_BS[mask_BS],
            "sequence_advantage_N": advantage_BS[mask_BS]}


def completion_counts(mask_BS: torch.Tensor, group=None) -> tuple[int, int]:
    """(completion tokens, sequences with at least one) summed over the ranks of `group`: one
    collective, on the device the group's backend needs."""
    counts = torch.stack([mask_BS.sum(), mask_BS.any(-1).sum()]).to(torch.int64)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        counts = counts.to(collective_device(group))
        dist.all_reduce(counts, group=group)
    tokens, sequences = counts.tolist()   # note: a host sync, once per step
    return tokens, sequences


def reduction_weights(mask_BS: torch.Tensor, reduction: str, counts: tuple[int, int],
                      world_size: int = 1) -> torch.Tensor:
    """w_m for every completion position [M] (float64), so that Σ_m w_m · l_m is the mean over
    the whole batch of all ranks: reduction "token" weighs every token the same (1 / tokens),
    "sequence" every sequence with tokens (1 / (sequences · its length)).

    counts: `completion_counts` of the full batch over all ranks (not of a micro-batch: that
    would make the mean of micro-batch means). The weights are multiplied by world_size because
    DDP and FSDP average gradients over ranks, and a global mean is their sum.
    """
    tokens, sequences = counts
    if reduction == "token":
        per_row_B = torch.full(mask_BS.shape[:1], 1.0 / max(tokens, 1), dtype=torch.float64)
    elif reduction == "sequence":
        length_B = mask_BS.sum(-1).clamp_min(1).double()
        per_row_B = 1.0 / (length_B * max(sequences, 1))
    else:
        raise ValueError(f"reduction must be 'token' or 'sequence', got {reduction!r}")
    return (world_size * per_row_B.to(mask_BS.device)[:, None].expand(mask_BS.shape))[mask_BS]


# --------------------------------------------------------------------------------------------
# the chunked loss


def completion_hidden(model, input_ids_BT: torch.Tensor, attention_BT: torch.Tensor,
                      mask_BS: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden state at the completion positions: [M, H].

    Goes through the model's own forward (so DDP's and FSDP's hooks run) and asks it for one
    position of logits only; hidden_states[-1] is the final (normed) state the head reads.
    """
    out = model(input_ids=input_ids_BT, attention_mask=attention_BT, output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1][:, :-1][mask_BS]


def _chunk_loss(head: Callable, token_loss: TokenLoss, hidden_NH, targets_N, weights_N, *extras_N,
                names: tuple[str, ...]):
    logits_NV = head(hidden_NH)
    # the log-softmax and the divergence in float32 (float64 when the model is), even under
    # bf16 autocast: bf16 log-probs lose the small differences a divergence is made of
    with torch.autocast(logits_NV.device.type, enabled=False):
        logprobs_NV = torch.log_softmax(logits_NV.to(torch.promote_types(logits_NV.dtype, torch.float32)), -1)
        extras = {name: t.to(logprobs_NV.dtype) if t.is_floating_point() else t
                  for name, t in zip(names, extras_N)}
        values_N = token_loss(logprobs_NV, targets_N, **extras)
        weighted = (weights_N.to(values_N.dtype) * values_N).sum()
    return weighted, _token_logprobs(logprobs_NV, targets_N).detach()


class _ChunkedLoss(torch.autograd.Function):
    """Σ of `_chunk_loss` over chunks. Forward runs each chunk's forward *and* backward
    (torch.autograd.grad) and keeps only the gradients: [M, H] for the hidden states and one
    parameter-sized tensor per head parameter. A chunk's [N, V] tensors die with the chunk and
    nothing is recomputed; backward only scales the kept gradients by the incoming one."""

    @staticmethod
    def forward(ctx, hidden_MH, targets_M, weights_M, extras_M, head, token_loss, size, *params):
        hidden_MH, names = hidden_MH.detach(), tuple(extras_M)
        grad_hidden_MH = torch.zeros_like(hidden_MH)
        grad_params = [None] * len(params)
        total, token_logprobs = hidden_MH.new_zeros((), dtype=torch.promote_types(hidden_MH.dtype, torch.float32)), []
        # an empty rank still runs one (empty) chunk: the head's parameters get a zero gradient
        for start in range(0, max(hidden_MH.shape[0], 1), size):
            rows = slice(start, start + size)
            hidden_NH = hidden_MH[rows].detach().requires_grad_()
            with torch.enable_grad():
                weighted, token_lp_N = _chunk_loss(head, token_loss, hidden_NH, targets_M[rows], weights_M[rows],
                                                   *(t[rows] for t in extras_M.values()), names=names)
                grads = torch.autograd.grad(weighted, [hidden_NH, *params], allow_unused=True)
            grad_hidden_MH[rows] = grads[0]
            grad_params = [g if acc is None else acc if g is None else acc.add_(g)
                           for acc, g in zip(grad_params, grads[1:])]
            total += weighted.detach()
            token_logprobs.append(token_lp_N)
        token_logprobs_M = torch.cat(token_logprobs)
        ctx.mark_non_differentiable(token_logprobs_M)
        ctx.save_for_backward(grad_hidden_MH, *[g if g is not None else torch.zeros_like(p)
                                                for g, p in zip(grad_params, params)])
        return total, token_logprobs_M

    @staticmethod
    def backward(ctx, grad_total, _grad_token_logprobs):
        grad_hidden_MH, *grad_params = ctx.saved_tensors
        scaled = [(g * grad_total).to(g.dtype) for g in (grad_hidden_MH, *grad_params)]
        return scaled[0], None, None, None, None, None, None, *scaled[1:]


def chunked_loss(hidden_MH: torch.Tensor, head: torch.nn.Module, token_loss: TokenLoss,
                 targets_M: torch.Tensor, weights_M: torch.Tensor, extras_M: dict[str, torch.Tensor] | None = None,
                 chunk_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_m weights_M[m] · token_loss(log_softmax(head(hidden_MH[m])), targets_M[m], extras_M[m]).

    hidden_MH: [M, H] decoder states at completion positions. head: the output embedding
    (hidden -> logits), its trainable parameters get their gradients. targets_M: [M] token ids.
    weights_M: [M]. extras_M: per-position teacher tensors [M, ...]. chunk_size: positions whose
    [chunk_size, V] logits exist at once (0: all).
    Returns (the loss, a scalar attached to hidden_MH and the head's parameters; the student's
    log-probs of the targets [M], detached, for logging).

    Memory: a few chunk_size × V floats at a time, plus the gradients kept until backward ([M, H]
    and the head's parameter-sized ones, which the optimizer holds anyway). Time: the same work
    as the unchunked loss on completion positions (the head's gradient is computed during the
    forward pass, so the loss cannot be differentiated twice).
    """
    params = [p for p in head.parameters() if p.requires_grad]
    size = chunk_size or max(hidden_MH.shape[0], 1)
    return _ChunkedLoss.apply(hidden_MH, targets_M, weights_M, extras_M or {}, head, token_loss, size, *params)

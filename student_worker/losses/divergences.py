"""Divergences between the teacher distribution p and the student distribution q.

Pure tensor functions, no I/O. Every input is a natural-log probability (the output of
`log_softmax`, or what the teacher service returns); an exact zero probability is a logprob of
-inf and contributes 0 to every value *and* every gradient (never NaN).

Shapes: B batch, T positions, V vocabulary, K teacher top-k. Every divergence returns a [B, T]
tensor (one value per position, summed over the vocabulary) in the dtype of its inputs; reduce it
over positions with `masked_mean`.

Two forms of each divergence:

* full:  `f(student_logprobs_BTV, teacher_logprobs_BTV, ...)`, when the whole teacher
  distribution is at hand;
* top-k: `f_topk(student_logprobs_BTV, teacher_topk_ids_BTK, teacher_topk_logprobs_BTK,
  teacher_tail_logprobs_BT, ...)`, when the teacher sent only its top-k log-probs and the log of
  its remaining mass. Both distributions are then compared on K+1 buckets (see `topk_buckets`).

Pick one by name with `divergence(name, ...)`, or from `DIVERGENCES` / `DIVERGENCES_TOPK`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DIVERGENCES",
    "DIVERGENCES_TOPK",
    "divergence",
    "forward_kl",
    "forward_kl_topk",
    "generalized_jsd",
    "generalized_jsd_topk",
    "masked_mean",
    "reverse_kl",
    "reverse_kl_topk",
    "sampled_reverse_kl",
    "skew_kl",
    "skew_kl_topk",
    "skew_reverse_kl",
    "skew_reverse_kl_topk",
    "topk_buckets",
    "total_variation",
    "total_variation_topk",
]

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# helpers


def _kl(log_a_BTV: torch.Tensor, log_b_BTV: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) = Σ_v a_v (log a_v − log b_v) over the last dim; [B, T, V] -> [B, T].

    Terms with a_v = 0 count 0 (the 0·log 0 = 0 convention), also when b_v = 0.
    """
    a_BTV = log_a_BTV.exp()
    # Mask the log-ratio, not the product: masking after the product would still let backward
    # compute 0 · (−inf − x) = NaN for the gradient of a_v.
    log_ratio_BTV = torch.where(a_BTV > 0, log_a_BTV - log_b_BTV, 0.0)
    return (a_BTV * log_ratio_BTV).sum(-1)


def _log_mixture(
    log_a_BTV: torch.Tensor, log_b_BTV: torch.Tensor, weight_a: float
) -> torch.Tensor:
    """log(w·a + (1−w)·b), computed in log space so that tiny probabilities survive."""
    if weight_a == 0.0:
        return log_b_BTV
    if weight_a == 1.0:
        return log_a_BTV
    # Where both are zero the mixture is zero too, but logaddexp(−inf, −inf) has a NaN gradient
    # (exp(−inf − −inf)). Feed it finite stand-ins there and put −inf back afterwards.
    both_zero_BTV = torch.isneginf(log_a_BTV) & torch.isneginf(log_b_BTV)
    log_a_BTV = torch.where(both_zero_BTV, 0.0, log_a_BTV)
    log_b_BTV = torch.where(both_zero_BTV, 0.0, log_b_BTV)
    mixed_BTV = torch.logaddexp(
        log_a_BTV + math.log(weight_a), log_b_BTV + math.log1p(-weight_a)
    )
    return torch.where(both_zero_BTV, NEG_INF, mixed_BTV)


def _logsumexp_last(x_BTV: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim; −inf (with a zero gradient, not NaN) for an all −inf row."""
    # Same trap as in _log_mixture: torch.logsumexp of an all −inf row back-propagates NaN.
    empty_BT1 = torch.isneginf(x_BTV).all(-1, keepdim=True)
    x_BTV = torch.where(empty_BT1, 0.0, x_BTV)
    total_BT1 = torch.logsumexp(x_BTV, -1, keepdim=True)
    return torch.where(empty_BT1, NEG_INF, total_BT1).squeeze(-1)


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


# --------------------------------------------------------------------------------------------
# full-distribution divergences


def forward_kl(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor
) -> torch.Tensor:
    """Forward KL, KL(p‖q) = Σ_v p_v (log p_v − log q_v).

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p. Returns [B, T].
    Mass-covering: the student pays wherever the teacher has mass it lacks.
    """
    return _kl(teacher_logprobs_BTV, student_logprobs_BTV)


def reverse_kl(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor
) -> torch.Tensor:
    """Reverse KL, KL(q‖p) = Σ_v q_v (log q_v − log p_v).

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p. Returns [B, T].
    Mode-seeking: the student pays for putting mass where the teacher has little.
    """
    return _kl(student_logprobs_BTV, teacher_logprobs_BTV)


def generalized_jsd(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, interpolating forward KL (β=0) and reverse KL (β=1).

        m       = β·p + (1−β)·q
        JSD_β   = β·KL(p‖m) + (1−β)·KL(q‖m)        for 0 < β < 1
        JSD_0   = KL(p‖q),  JSD_1 = KL(q‖p)

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p; 0 ≤ beta ≤ 1.
    Returns [B, T].

    This is the GKD paper's definition with TRL's endpoints (`GKDTrainer.generalized_jsd_loss`),
    so a β means the same here as there. β = 0.5 is the ordinary JSD (at most log 2), and
    JSD_β(p, q) = JSD_{1−β}(q, p). Note: the interior formula tends to 0, not to the KLs, as β
    approaches 0 or 1 (its gradient shrinks like β); the endpoints are the KLs by definition.
    """
    beta = _check_weight("beta", beta)
    # The endpoints are defined as the KLs (the interior formula would give 0 there).
    if beta == 0.0:
        return forward_kl(student_logprobs_BTV, teacher_logprobs_BTV)
    if beta == 1.0:
        return reverse_kl(student_logprobs_BTV, teacher_logprobs_BTV)
    log_m_BTV = _log_mixture(teacher_logprobs_BTV, student_logprobs_BTV, beta)
    kl_teacher_BT = _kl(teacher_logprobs_BTV, log_m_BTV)
    kl_student_BT = _kl(student_logprobs_BTV, log_m_BTV)
    return beta * kl_teacher_BT + (1.0 - beta) * kl_student_BT


def skew_kl(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """Skew forward KL (DistiLLM), KL(p ‖ α·p + (1−α)·q).

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p; 0 ≤ alpha ≤ 1.
    Returns [B, T]. alpha = 0 is forward KL. Mixing some of p into the student side bounds the
    value by −log α, so a student with (near-)zero mass where p has mass cannot blow it up.
    """
    alpha = _check_weight("alpha", alpha)
    log_m_BTV = _log_mixture(teacher_logprobs_BTV, student_logprobs_BTV, alpha)
    return _kl(teacher_logprobs_BTV, log_m_BTV)


def skew_reverse_kl(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """Skew reverse KL (DistiLLM), KL(q ‖ α·q + (1−α)·p).

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p; 0 ≤ alpha ≤ 1.
    Returns [B, T]. alpha = 0 is reverse KL; the value is at most −log α.
    """
    alpha = _check_weight("alpha", alpha)
    log_m_BTV = _log_mixture(student_logprobs_BTV, teacher_logprobs_BTV, alpha)
    return _kl(student_logprobs_BTV, log_m_BTV)


def total_variation(
    student_logprobs_BTV: torch.Tensor, teacher_logprobs_BTV: torch.Tensor
) -> torch.Tensor:
    """Total variation distance, ½ Σ_v |p_v − q_v|, in [0, 1].

    student_logprobs_BTV, teacher_logprobs_BTV: [B, T, V] log q, log p. Returns [B, T].
    """
    return 0.5 * (teacher_logprobs_BTV.exp() - student_logprobs_BTV.exp()).abs().sum(-1)


# --------------------------------------------------------------------------------------------
# top-k + tail form


def topk_buckets(
    student_logprobs_BTV: torch.Tensor,
    teacher_topk_ids_BTK: torch.Tensor,
    teacher_topk_logprobs_BTK: torch.Tensor,
    teacher_tail_logprobs_BT: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions coarsened to K+1 buckets: the teacher's top-k tokens, then the rest.

        teacher_buckets = [log p(id_1), …, log p(id_K), log(1 − Σ_k p(id_k))]
        student_buckets = [log q(id_1), …, log q(id_K), log Σ_{v ∉ ids} q_v]

    student_logprobs_BTV: [B, T, V] log q (normalized). teacher_topk_ids_BTK: [B, T, K] distinct
    token ids. teacher_topk_logprobs_BTK: [B, T, K]. teacher_tail_logprobs_BT: [B, T], the log of
    the teacher's mass outside its top-k (−inf when K = V).
    Returns (student_buckets_BTK1, teacher_buckets_BTK1), both [B, T, K+1] log-probabilities.

    Any divergence of these two K+1-point distributions is a lower bound of the full one (data
    processing), and equals it when K = V.
    """
    ids_BTK = teacher_topk_ids_BTK.long()  # gather/scatter need int64; the wire may carry int32
    V = student_logprobs_BTV.shape[-1]
    if ids_BTK.numel() and int(ids_BTK.max()) >= V:
        # a teacher with a larger (padded) vocabulary: ids past the student's outputs read a
        # -inf column at V (the student cannot emit them)
        ids_BTK = ids_BTK.clamp(max=V)
        student_logprobs_BTV = torch.cat([student_logprobs_BTV, torch.full_like(
            student_logprobs_BTV[..., :1], NEG_INF)], -1)
    student_topk_BTK = student_logprobs_BTV.gather(-1, ids_BTK)
    # Teacher top-k ids the student cannot emit (past its outputs, or padded ids it masks) fold
    # into the teacher's tail: both sides then give that bucket zero mass, so no divergence is
    # infinite for want of a token that does not exist on the student's side.
    unreachable_BTK = student_topk_BTK == NEG_INF
    if unreachable_BTK.any():
        teacher_tail_logprobs_BT = torch.logaddexp(teacher_tail_logprobs_BT, _logsumexp_last(
            teacher_topk_logprobs_BTK.masked_fill(~unreachable_BTK, NEG_INF)))
        teacher_topk_logprobs_BTK = teacher_topk_logprobs_BTK.masked_fill(unreachable_BTK, NEG_INF)
    # The student's tail is summed over the non-top-k ids directly rather than as
    # log1p(−Σ gathered): when the top-k hold nearly all the mass, 1 − Σ cancels
    # catastrophically and the small tail (and its gradient) would be lost.
    outside_BTV = student_logprobs_BTV.scatter(-1, ids_BTK, NEG_INF)
    student_tail_BT = _logsumexp_last(outside_BTV)
    student_buckets_BTK1 = torch.cat([student_topk_BTK, student_tail_BT.unsqueeze(-1)], -1)
    teacher_buckets_BTK1 = torch.cat(
        [teacher_topk_logprobs_BTK, teacher_tail_logprobs_BT.unsqueeze(-1)], -1
    )
    return student_buckets_BTK1, teacher_buckets_BTK1


def _topk_form(full_form):
    """The top-k + tail form of a full-distribution divergence: the same function applied to the
    K+1 buckets of `topk_buckets`. Extra arguments (beta, alpha) pass through."""

    def topk_form(student_logprobs_BTV, teacher_topk_ids_BTK, teacher_topk_logprobs_BTK,
                  teacher_tail_logprobs_BT, *args, **kwargs) -> torch.Tensor:
        buckets = topk_buckets(student_logprobs_BTV, teacher_topk_ids_BTK,
                               teacher_topk_logprobs_BTK, teacher_tail_logprobs_BT)
        return full_form(*buckets, *args, **kwargs)

    topk_form.__name__ = topk_form.__qualname__ = f"{full_form.__name__}_topk"
    topk_form.__doc__ = (f"`{full_form.__name__}` over the K+1 buckets of `topk_buckets`: "
                         "(student_logprobs_BTV, teacher_topk_ids_BTK, teacher_topk_logprobs_BTK, "
                         "teacher_tail_logprobs_BT, ...) -> [B, T].")
    return topk_form


forward_kl_topk = _topk_form(forward_kl)
reverse_kl_topk = _topk_form(reverse_kl)
generalized_jsd_topk = _topk_form(generalized_jsd)
skew_kl_topk = _topk_form(skew_kl)
skew_reverse_kl_topk = _topk_form(skew_reverse_kl)
total_variation_topk = _topk_form(total_variation)


# --------------------------------------------------------------------------------------------
# sampled estimator and reduction


def sampled_reverse_kl(
    student_token_logprobs_BT: torch.Tensor, teacher_token_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """Single-sample reverse KL at the sampled tokens: log q(x_t) − log p(x_t).

    student_token_logprobs_BT, teacher_token_logprobs_BT: [B, T] log-probs of the token x_t the
    student sampled at each position. Returns [B, T].

    With x_t ~ q its expectation is Σ_x q(x)(log q(x) − log p(x)) = KL(q‖p), so it is an
    unbiased per-token estimate of the reverse KL that needs only one teacher log-prob per
    position. On-policy distillation uses its negation as a per-token advantage (a penalty on
    tokens the teacher finds unlikely). Nothing is detached here: whether gradients flow
    through it is the caller's choice.
    """
    return student_token_logprobs_BT - teacher_token_logprobs_BT


def masked_mean(
    values_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str = "token"
) -> torch.Tensor:
    """Mean of values_BT over the positions where mask_BT is true; returns a scalar.

    values_BT: [B, T]. mask_BT: [B, T], bool or 0/1.
    mode="token":    Σ_{b,t} mask·values / Σ_{b,t} mask  (every token weighs the same);
    mode="sequence": mean over the sequences with ≥ 1 masked token of each sequence's own
                     masked mean (every sequence weighs the same, however long).
    An empty mask gives 0, still attached to the graph (zero gradient), not NaN.
    """
    if mode not in ("token", "sequence"):
        raise ValueError(f"mode must be 'token' or 'sequence', got {mode!r}")
    keep_BT = mask_BT.bool()
    # where, not multiplication: a masked-out NaN/inf (e.g. the KL at a padding position) must not
    # leak into the sum, and 0 · NaN would.
    kept_BT = torch.where(keep_BT, values_BT, 0.0)
    if mode == "token":
        count = keep_BT.sum().clamp_min(1).to(values_BT.dtype)
        return kept_BT.sum() / count
    count_B = keep_BT.sum(-1)
    per_sequence_B = kept_BT.sum(-1) / count_B.clamp_min(1).to(values_BT.dtype)
    has_tokens_B = count_B > 0
    n_sequences = has_tokens_B.sum().clamp_min(1).to(values_BT.dtype)
    return torch.where(has_tokens_B, per_sequence_B, 0.0).sum() / n_sequences


# --------------------------------------------------------------------------------------------
# choosing a divergence by name

DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tv": total_variation,
}

DIVERGENCES_TOPK = {
    "forward_kl": forward_kl_topk,
    "reverse_kl": reverse_kl_topk,
    "jsd": generalized_jsd_topk,
    "skew_kl": skew_kl_topk,
    "skew_reverse_kl": skew_reverse_kl_topk,
    "tv": total_variation_topk,
}

# The one hyperparameter each parametrized divergence takes.
_HYPERPARAMETER = {"jsd": "beta", "skew_kl": "alpha", "skew_reverse_kl": "alpha"}


def divergence(
    name: str,
    student_logprobs_BTV: torch.Tensor,
    teacher_logprobs_BTV: torch.Tensor | None = None,
    *,
    teacher_topk_ids_BTK: torch.Tensor | None = None,
    teacher_topk_logprobs_BTK: torch.Tensor | None = None,
    teacher_tail_logprobs_BT: torch.Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> torch.Tensor:
    """The divergence `name` (a key of DIVERGENCES), per position: [B, T].

    Give either teacher_logprobs_BTV (full form) or all three teacher_topk_* / tail tensors
    (top-k form). beta is used by "jsd", alpha by "skew_kl" and "skew_reverse_kl".
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    hyper = {"beta": beta, "alpha": alpha}
    kwargs = {k: hyper[k] for k in [_HYPERPARAMETER.get(name)] if k is not None}
    topk = (teacher_topk_ids_BTK, teacher_topk_logprobs_BTK, teacher_tail_logprobs_BT)
    if teacher_logprobs_BTV is not None:
        if any(t is not None for t in topk):
            raise ValueError("give the full teacher log-probs or the top-k form, not both")
        return DIVERGENCES[name](student_logprobs_BTV, teacher_logprobs_BTV, **kwargs)
    if any(t is None for t in topk):
        raise ValueError("the top-k form needs teacher_topk_ids_BTK, teacher_topk_logprobs_BTK "
                         "and teacher_tail_logprobs_BT")
    return DIVERGENCES_TOPK[name](student_logprobs_BTV, *topk, **kwargs)

"""score_logits against a float64 reference on random logits."""

import math

import pytest
import torch

from teacher_server.scoring import TAIL_RESOLUTION, score_logits, tail_from_topk


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("top_k", [1, 8, 50])
def test_matches_float64_reference(top_k, temperature):
    g = torch.Generator().manual_seed(top_k)
    logits = torch.randn(13, 50, generator=g) * 4
    targets = torch.randint(0, 50, (13,), generator=g)
    cands = torch.randint(0, 50, (13, 6), generator=g)
    out = score_logits(logits, targets, top_k, temperature, cands)

    ref = torch.log_softmax(logits.double() / temperature, -1)
    ref_top, ref_ids = ref.topk(top_k, -1)
    torch.testing.assert_close(out.topk_logprobs.double(), ref_top, atol=1e-5, rtol=0)
    assert torch.equal(out.topk_ids.long(), ref_ids)
    torch.testing.assert_close(out.token_logprobs.double(), ref.gather(-1, targets[:, None])[:, 0],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out.candidate_logprobs.double(), ref.gather(-1, cands), atol=1e-5, rtol=0)
    ref_tail = torch.log1p(-ref_top.exp().sum(-1)) if top_k < 50 else torch.full((13,), -torch.inf, dtype=torch.float64)
    torch.testing.assert_close(out.tail_logprobs.double(), ref_tail, atol=1e-5, rtol=1e-5)
    # the probabilities of top-k and tail add up to one
    total = torch.logsumexp(torch.cat([out.topk_logprobs, out.tail_logprobs[:, None]], -1), -1)
    torch.testing.assert_close(total, torch.zeros(13), atol=1e-5, rtol=0)


def test_tail_is_minus_inf_when_k_is_the_vocabulary():
    out = score_logits(torch.randn(4, 10), torch.zeros(4, dtype=torch.long), 10)
    assert torch.isneginf(out.tail_logprobs).all()


def test_tiny_tail_keeps_its_precision():
    # top-1 holds all but ~e-30 of the mass: 1 - sum(p) is exactly 0 in float32
    logits = torch.tensor([[40.0, -30.0, -31.0]])
    out = score_logits(logits, torch.tensor([0]), 1)
    expected = torch.logsumexp(torch.tensor([-30.0, -31.0], dtype=torch.float64), 0) - 40.0
    assert abs(out.tail_logprobs.item() - expected.item()) < 1e-4


def test_does_not_modify_its_input():
    logits = torch.randn(3, 20)
    before = logits.clone()
    score_logits(logits, torch.zeros(3, dtype=torch.long), 5)
    assert torch.equal(logits, before)


def test_tail_below_float32_exp_range_is_finite():
    # the rest lies e^-150 below the top token: exp underflows, the logsumexp fallback does not
    logits = torch.tensor([[100.0, -50.0, -51.0], [0.0, 1.0, 2.0]])
    out = score_logits(logits, torch.tensor([0, 1]), 1)
    expected = torch.logsumexp(torch.tensor([-50.0, -51.0], dtype=torch.float64), 0) - 100.0
    assert abs(out.tail_logprobs[0].item() - expected.item()) < 1e-3
    assert torch.isfinite(out.tail_logprobs).all()


def test_tail_from_topk_is_exact_up_to_float32_rounding():
    """The vllm backend's tail from rounded top-k log-probs against the float64 reference;
    below TAIL_RESOLUTION it is an upper bound, never -inf, and -inf when k is the vocabulary."""
    g = torch.Generator().manual_seed(0)
    logits_NV = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3
    logits_NV[:8, 0] += 30          # rows whose top token takes all but e^-20 of the mass
    logp_NV = torch.log_softmax(logits_NV, -1)
    topk_NK = logp_NV.topk(20, -1).values
    exact_N = torch.logsumexp(logp_NV.sort(-1, descending=True).values[:, 20:], -1)
    tail_N = tail_from_topk(topk_NK.float(), 1000).double()
    sure = exact_N.exp() > 10 * TAIL_RESOLUTION
    assert sure[8:].all() and not sure[:8].any()
    torch.testing.assert_close(tail_N[sure], exact_N[sure], atol=0, rtol=0.002)
    # near or below the resolution: an estimate or an upper bound, small and never -inf
    assert (tail_N[~sure] >= exact_N[~sure] - 0.1).all() and torch.isfinite(tail_N).all()
    assert (tail_N[~sure] <= math.log(10 * TAIL_RESOLUTION)).all()
    assert (tail_N[~sure] > exact_N[~sure] + 1).any(), "no row took the bound"
    assert torch.isneginf(tail_from_topk(logp_NV.float(), 1000)).all()

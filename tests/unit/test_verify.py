"""Verify's accept/reject rule on its own (statistical exactness of speculative sampling), and
Verify items sharing Score's forward pass in the backend (over gRPC: tests/integration/test_verify.py)."""

import pytest
import torch

from distill.results import TeacherScores, VerifyOutcome
from teacher_server.backends import run_batch
from teacher_server.scoring import ScoreItem
from teacher_server.verify import VerifyItem, verify_draft

# 0.999 quantile of the chi-square distribution with 5 degrees of freedom (V = 6 categories):
# a correct sampler fails the test once in a thousand seeds; the seeds below are fixed.
CHI2_999_DOF5 = 20.515

P0 = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
Q0 = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30])
P1 = torch.tensor([0.10, 0.10, 0.40, 0.10, 0.20, 0.10])
Q1 = torch.tensor([0.20, 0.05, 0.30, 0.25, 0.10, 0.10])
P2 = torch.tensor([0.05, 0.35, 0.05, 0.25, 0.05, 0.25])


def chi_square(tokens: torch.Tensor, p_V: torch.Tensor) -> float:
    """Pearson's statistic of the observed token counts against the distribution p."""
    counts = torch.bincount(tokens, minlength=p_V.numel()).double()
    expected = counts.sum() * p_V.double()
    return float(((counts - expected) ** 2 / expected).sum())


def run_speculative(p_GV1, q_GV, runs=20_000, seed=0):
    """Draft x_i ~ q_i, verify, and return (drafts [R, G], num_accepted [R], next_token [R])."""
    drafts_RG = torch.stack([torch.multinomial(q_V, runs, replacement=True,
                                               generator=torch.Generator().manual_seed(seed + i))
                             for i, q_V in enumerate(q_GV)], dim=1)
    generator = torch.Generator().manual_seed(seed + 100)
    outs = [verify_draft(p_GV1, q_GV, d, "speculative", 0, generator) for d in drafts_RG]
    n_R = torch.tensor([o[0] for o in outs])
    next_R = torch.tensor([o[1] for o in outs])
    return drafts_RG, n_R, next_R, outs


def test_speculative_first_token_follows_the_teacher():
    p_GV1, q_GV = torch.stack([P0, P2]), Q0[None]
    drafts_RG, n_R, next_R, outs = run_speculative(p_GV1, q_GV)
    first_R = torch.where(n_R == 1, drafts_RG[:, 0], next_R)
    assert chi_square(first_R, P0) < CHI2_999_DOF5
    # the same test tells the student's own draws apart from the teacher's: it can fail
    assert chi_square(drafts_RG[:, 0], P0) > CHI2_999_DOF5
    # accept_probs = min(1, p/q) at the draft token
    for d, (_, _, accept_G) in zip(drafts_RG[:50], outs[:50]):
        assert accept_G.tolist() == pytest.approx([min(1.0, P0[d[0]].item() / Q0[d[0]].item())])


def test_speculative_two_tokens_with_bonus():
    p_GV1, q_GV = torch.stack([P0, P1, P2]), torch.stack([Q0, Q1])
    drafts_RG, n_R, next_R, _ = run_speculative(p_GV1, q_GV, seed=7)
    first_R = torch.where(n_R >= 1, drafts_RG[:, 0], next_R)
    assert chi_square(first_R, P0) < CHI2_999_DOF5
    # given the first was kept, the second output token follows p_1 (draft or correction) ...
    kept = n_R >= 1
    second_R = torch.where(n_R[kept] == 2, drafts_RG[kept, 1], next_R[kept])
    assert chi_square(second_R, P1) < CHI2_999_DOF5
    # ... and after two accepted drafts the bonus token follows p_2
    bonus_R = next_R[n_R == 2]
    assert bonus_R.numel() > 2000, "the bonus path was hardly exercised"
    assert chi_square(bonus_R, P2) < CHI2_999_DOF5
    assert chi_square(drafts_RG[kept, 1], P1) > CHI2_999_DOF5


def test_verify_draft_edge_cases():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    # q = 0 < p accepts for sure; p = 0 rejects for sure, and the correction avoids the draft
    n, _, accept = verify_draft(p, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0]), "speculative", 0, g)
    assert (n, accept.tolist()) == (1, [1.0])
    n, nxt, accept = verify_draft(p, torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([2]), "speculative", 0, g)
    assert (n, accept.tolist()) == (0, [0.0]) and nxt in (0, 1)
    # identical p and q accept everything
    n, _, accept = verify_draft(p, p[:1], torch.tensor([1]), "speculative", 0, g)
    assert n == 1 and accept.tolist() == [1.0]
    # greedy and topk give 0/1 for every position, also after the first rejection
    p3 = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    draft = torch.tensor([1, 2, 2])
    n, nxt, accept = verify_draft(p3, None, draft, "greedy", 0, g)
    assert (n, nxt, accept.tolist()) == (1, 0, [1.0, 0.0, 1.0])
    n, _, accept = verify_draft(p3, None, draft, "topk", 2, g)
    assert (n, accept.tolist()) == (3, [1.0, 1.0, 1.0])
    n, nxt, accept = verify_draft(p3, None, torch.tensor([1, 0, 2]), "greedy", 0, g)
    assert (n, nxt) == (3, 2)


def test_verify_items_share_the_score_forward_pass(tiny_model_dir, reference_model):
    """run_batch sends Score and Verify items to one `score` call: one decoder pass for both."""
    from transformers import AutoTokenizer

    from teacher_server.backends.hf import TransformersBackend

    backend = TransformersBackend(reference_model, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  str(tiny_model_dir))
    calls = []
    hidden_states = backend.hidden_states
    backend.hidden_states = lambda ids, lengths: calls.append(len(ids)) or hidden_states(ids, lengths)
    score = ScoreItem.one(torch.arange(10, 20), 3, 4, 1.0, None)
    verify = VerifyItem(torch.arange(5), torch.tensor([7, 8]), None, "greedy", 1.0, 0, 4, 0)
    out_score, out_verify = run_batch(backend, [score, verify])
    assert calls == [2]
    assert isinstance(out_score, TeacherScores) and out_score.topk_ids.shape == (7, 4)
    assert isinstance(out_verify, VerifyOutcome) and out_verify.scores.topk_ids.shape == (3, 4)
    assert verify.num_tokens == 7 and verify.token_ids.tolist() == [0, 1, 2, 3, 4, 7, 8]


def test_a_mixed_batch_equals_each_item_alone(tiny_model_dir, reference_model):
    """The backend gathers a group's rows and cuts its results with one tensor op each: items
    of different lengths, starts, k and candidate widths (ragged), and a Verify item, batched,
    get what each gets alone."""
    from transformers import AutoTokenizer

    from teacher_server.backends.hf import TransformersBackend

    backend = TransformersBackend(reference_model, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  str(tiny_model_dir))
    g = torch.Generator().manual_seed(0)
    cands = lambda n, c: torch.randint(0, 100, (n, c), generator=g)
    items = [ScoreItem.one(torch.arange(10, 20), 3, 4, 1.0, None),
             ScoreItem.one(torch.arange(30, 35), 1, 4, 1.0, None),
             ScoreItem.one(torch.arange(40, 52), 5, 4, 1.0, cands(7, 3)),
             ScoreItem.one(torch.arange(60, 66), 2, 4, 1.0, cands(4, 5)),
             ScoreItem.one(torch.arange(70, 78), 4, 6, 1.0, None),
             VerifyItem(torch.arange(5), torch.tensor([7, 8]), None, "greedy", 1.0, 0, 4, 0)]
    together = backend.score(items)
    for item, got in zip(items, together):
        alone = backend.score([item])[0]
        if isinstance(item, VerifyItem):
            assert (got.num_accepted, got.next_token) == (alone.num_accepted, alone.next_token)
            got, alone = got.scores, alone.scores
        assert torch.equal(got.topk_ids, alone.topk_ids)
        for name in ("topk_logprobs", "token_logprobs", "tail_logprobs", "candidate_logprobs"):
            a, b = getattr(got, name), getattr(alone, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

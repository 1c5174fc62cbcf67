"""Verify over gRPC against a real server process, checked against in-process forwards and Score
(the accept/reject rule on its own: tests/unit/test_verify.py)."""

import grpc
import httpx
import numpy as np
import pytest
import torch

from distill.v1 import teacher_pb2 as pb
from tests.helpers import assert_refused, greedy_reference, random_sequences
from tests.helpers.bad_requests import UNIFORM, VERIFY_BAD, VOCAB, ids, probs, spec, vreq, vseq


def teacher_logprobs(model, prefix, draft, temperature=1.0) -> torch.Tensor:
    """log p at the G draft positions and the one after, from an in-process forward: [G+1, V]."""
    ids = torch.tensor([list(prefix) + list(draft)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prefix) - 1:].double()
    return torch.log_softmax(logits / temperature, dim=-1)


def ranked_draft(model, prefix, ranks):
    """A draft whose i-th token is the teacher's ranks[i]-th most likely one at its position."""
    draft = []
    for r in ranks:
        lp = teacher_logprobs(model, prefix, draft)[-1]
        draft.append(int(lp.argsort(descending=True)[r]))
    return draft


def test_topk_keeps_exactly_the_drafts_in_the_teachers_top_k(client, reference_model):
    K = 5
    prefixes = random_sequences(3, [6, 15, 30], VOCAB, seed=20)
    # ranks far from the K boundary, so float32 rounding cannot move a token across it
    patterns = [[0, 2, 1, 60, 3], [1, 0, 2, 1, 0], [100, 0, 0, 0, 0]]
    drafts = [ranked_draft(reference_model, p, r) for p, r in zip(prefixes, patterns)]
    outcomes = client.verify(prefixes, drafts, mode="topk", top_k=K, seed=1)
    for prefix, draft, ranks, out in zip(prefixes, drafts, patterns, outcomes):
        lp = teacher_logprobs(reference_model, prefix, draft)
        in_top = [(lp[i] > lp[i, d]).sum().item() < K for i, d in enumerate(draft)]
        assert in_top == [r < K for r in ranks]
        expected = in_top.index(False) if False in in_top else len(draft)
        assert out.num_accepted == expected
        assert out.accept_probs.tolist() == [float(x) for x in in_top]
        assert 0 <= out.next_token < VOCAB
        assert out.scores.topk_ids.shape == (len(draft) + 1, K)


def test_greedy_accepts_the_teachers_own_continuation(client, reference_model):
    prompts = random_sequences(3, [4, 12, 25], VOCAB, seed=21)
    for prompt in prompts:
        greedy = greedy_reference(reference_model, prompt, 9)
        for start in (0, 4):        # verify twice along the same continuation
            prefix, draft = prompt + greedy[:start], greedy[start:start + 4]
            [out] = client.verify([prefix], [draft], mode="greedy")
            assert out.num_accepted == 4 and out.next_token == greedy[start + 4]
            assert out.accept_probs.tolist() == [1.0] * 4


def test_greedy_rejects_a_wrong_draft_at_the_right_index(client, reference_model):
    prompt = random_sequences(1, [10], VOCAB, seed=22)[0]
    greedy = greedy_reference(reference_model, prompt, 6)
    for wrong_at in range(5):
        draft = list(greedy[:5])
        draft[wrong_at] = (draft[wrong_at] + 1) % VOCAB
        [out] = client.verify([prompt], [draft], mode="greedy")
        assert out.num_accepted == wrong_at
        assert out.next_token == greedy[wrong_at]
        assert out.accept_probs[:wrong_at + 1].tolist() == [1.0] * wrong_at + [0.0]


def test_speculative_greedy_loop_reproduces_generate(client, reference_model):
    """Random drafts, keep what greedy Verify accepts plus its next token: the teacher's greedy
    decoding, token for token."""
    prompt = random_sequences(1, [7], VOCAB, seed=23)[0]
    with torch.no_grad():
        ids = torch.tensor([prompt])
        ref = reference_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=12, pad_token_id=0)[0, len(prompt):].tolist()
    g = torch.Generator().manual_seed(0)
    out_ids, calls = [], 0
    while len(out_ids) < len(ref):
        draft = torch.randint(0, VOCAB, (4,), generator=g).tolist()
        if calls % 2:   # every other draft starts right, so acceptance is exercised too
            draft = (ref[len(out_ids):len(out_ids) + 2] + draft)[:4]
        [v] = client.verify([prompt + out_ids], [draft], mode="greedy")
        out_ids += draft[:v.num_accepted] + [v.next_token]
        calls += 1
    assert out_ids[:len(ref)] == ref
    assert calls < len(ref), "no draft token was ever accepted"


def student_probs(model, prefix, draft, seed=0) -> torch.Tensor:
    """A student q [G, V] float32 that, like a real one, overrates its own draft tokens (so
    min(1, p/q) is often below 1): the teacher's p, noise and a spike at the draft token."""
    p = teacher_logprobs(model, prefix, draft)[:-1].exp()
    noise = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)
    spike = torch.nn.functional.one_hot(torch.tensor(draft), p.shape[-1])
    return (0.4 * p + 0.3 * noise / noise.sum(-1, keepdim=True) + 0.3 * spike).float()


@pytest.mark.parametrize("mode", ["speculative", "topk", "greedy"])
def test_verify_scores_equal_score(client, reference_model, mode):
    prefixes = random_sequences(2, [9, 20], VOCAB, seed=24)
    drafts = random_sequences(2, [5, 3], VOCAB, seed=25)
    drafts[1] = greedy_reference(reference_model, prefixes[1], 3)   # all kept: a bonus row
    probs = [student_probs(reference_model, p, d) for p, d in zip(prefixes, drafts)]
    outcomes = client.verify(prefixes, drafts, probs if mode == "speculative" else None, mode=mode,
                             top_k=6, temperature=0.7, seed=3, score_top_k=8)
    for prefix, draft, q, out in zip(prefixes, drafts, probs, outcomes):
        [score] = client.score([prefix + draft + [out.next_token]], len(prefix), top_k=8,
                               temperature=0.7)
        assert out.scores.topk_ids.shape == (len(draft) + 1, 8)
        assert torch.equal(out.scores.topk_ids, score.topk_ids)
        for name in ("topk_logprobs", "token_logprobs", "tail_logprobs"):
            torch.testing.assert_close(getattr(out.scores, name), getattr(score, name),
                                       atol=1e-5, rtol=0)
        assert out.scores.candidate_logprobs is None
        if mode == "speculative":   # accept_probs = min(1, p/q) at every draft position
            lp = teacher_logprobs(reference_model, prefix, draft, 0.7)[:-1]
            idx = torch.arange(len(draft)), torch.tensor(draft)
            expected = (lp[idx].exp() / q.double()[idx]).clamp(max=1)
            torch.testing.assert_close(out.accept_probs.double(), expected, atol=1e-5, rtol=1e-4)


def test_same_seed_same_answer_and_top_k_form(client, reference_model):
    prefixes = random_sequences(8, [5, 9, 14], VOCAB, seed=26)
    drafts = [ranked_draft(reference_model, p, [0, 1, 3, 0]) for p in prefixes]
    probs = [student_probs(reference_model, p, d, seed=i)
             for i, (p, d) in enumerate(zip(prefixes, drafts))]
    flat = lambda outs: [(o.num_accepted, o.next_token) for o in outs]
    first = client.verify(prefixes, drafts, probs, seed=11)
    assert flat(client.verify(prefixes, drafts, probs, seed=11)) == flat(first)
    assert flat(client.verify(prefixes, drafts, probs, seed=12)) != flat(first)
    assert len({o.num_accepted for o in first}) > 1, "every draft got the same verdict"
    # a student that sends its top-8 only: the server spreads the rest evenly, as done here
    k = 8
    topk = [q.topk(k, dim=-1) for q in probs]
    spread = [(1 - t.values.sum(-1, keepdim=True)) / (VOCAB - k) for t in topk]
    expanded = [s.expand(-1, VOCAB).clone().scatter_(-1, t.indices, t.values)
                for s, t in zip(spread, topk)]
    compact = client.verify(prefixes, drafts, [(t.indices, t.values) for t in topk], seed=11)
    full = client.verify(prefixes, drafts, expanded, seed=11)
    assert flat(compact) == flat(full)
    for c, f in zip(compact, full):
        torch.testing.assert_close(c.accept_probs, f.accept_probs, atol=1e-6, rtol=1e-5)


def test_metrics_count_draft_and_accepted_tokens(client, teacher, reference_model):
    prompt = random_sequences(1, [8], VOCAB, seed=28)[0]
    client.verify([prompt], [greedy_reference(reference_model, prompt, 3)], mode="greedy")
    metrics = httpx.get(f"{teacher.http}/metrics").text
    value = lambda name: float(next(line for line in metrics.splitlines()
                                    if line.startswith(name)).split()[-1])
    assert value("teacher_draft_tokens_total") >= value("teacher_accepted_tokens_total") >= 3
    assert 'teacher_requests_total{code="OK",rpc="Verify",tenant="open"}' in metrics


# Bad input: a clear INVALID_ARGUMENT, and the server keeps serving.


@pytest.mark.parametrize("name", list(VERIFY_BAD))
def test_bad_input_then_good_request(stub, name):
    bad, message = VERIFY_BAD[name]
    assert_refused(stub.Verify, bad, message)
    good = stub.Verify(spec(vseq(draft_probs=probs(UNIFORM)), seed=1), timeout=30)
    [result] = good.results
    assert 0 <= result.num_accepted <= 2 and list(result.accept_probs.shape) == [2]
    assert list(result.scores.topk_ids.shape) == [3, 20]


def test_draft_probs_are_ignored_outside_speculative_mode(stub):
    garbage = vseq(draft_probs=probs([[-1.0]]), draft_topk_ids=ids([[VOCAB]]))
    for mode, extra in ((pb.VERIFY_MODE_GREEDY, {}), (pb.VERIFY_MODE_TOPK, {"accept_top_k": 3})):
        [result] = stub.Verify(vreq(garbage, mode=mode, **extra), timeout=30).results
        assert list(result.scores.topk_ids.shape) == [3, 20]


def test_top_k_form_over_the_whole_vocabulary_must_sum_to_one(stub):
    every = np.tile(np.arange(VOCAB, dtype=np.int32), (2, 1))
    with pytest.raises(grpc.RpcError) as err:
        stub.Verify(spec(vseq(draft_probs=probs(UNIFORM * 0.5), draft_topk_ids=ids(every))), timeout=30)
    assert "rows must sum to 1" in err.value.details()

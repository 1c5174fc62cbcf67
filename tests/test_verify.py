"""Verify: the accept/reject rule on its own (statistical exactness of speculative sampling), then
over gRPC against a real server process, checked against in-process forwards and Score."""

import grpc
import httpx
import numpy as np
import pytest
import torch

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from distill.results import TeacherScores, VerifyOutcome
from teacher_server.backends import run_batch
from teacher_server.scoring import ScoreItem
from teacher_server.verify import VerifyItem, verify_draft
from tests.conftest import assert_refused, random_sequences
from tests.test_generate import greedy_reference

VOCAB, CONTEXT = 512, 256
# 0.999 quantile of the chi-square distribution with 5 degrees of freedom (V = 6 categories):
# a correct sampler fails the test once in a thousand seeds; the seeds below are fixed.
CHI2_999_DOF5 = 20.515


def chi_square(tokens: torch.Tensor, p_V: torch.Tensor) -> float:
    """Pearson's statistic of the observed token counts against the distribution p."""
    counts = torch.bincount(tokens, minlength=p_V.numel()).double()
    expected = counts.sum() * p_V.double()
    return float(((counts - expected) ** 2 / expected).sum())


P0 = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
Q0 = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30])
P1 = torch.tensor([0.10, 0.10, 0.40, 0.10, 0.20, 0.10])
Q1 = torch.tensor([0.20, 0.05, 0.30, 0.25, 0.10, 0.10])
P2 = torch.tensor([0.05, 0.35, 0.05, 0.25, 0.05, 0.25])


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


# Over the real server.

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

def ids(values):
    return pack(np.asarray(values, dtype=np.int32))


def probs(array):
    return pack(np.asarray(array, dtype=np.float32))


UNIFORM = np.full((2, VOCAB), 1 / VOCAB)


def vseq(prefix=(1, 2, 3), draft=(4, 5), **kw):
    return pb.VerifySequence(prefix_ids=ids(prefix), draft_ids=ids(draft), **kw)


def vreq(*seqs, **kw):
    return pb.VerifyRequest(**{"sequences": list(seqs) or [vseq()], "mode": pb.VERIFY_MODE_GREEDY, **kw})


def spec(*seqs, **kw):
    return vreq(*seqs, mode=pb.VERIFY_MODE_SPECULATIVE, **kw)


def with_row(value, row=1, col=0):
    array = UNIFORM.copy()
    array[row, col] = value
    return probs(array)


TOPK_IDS = ids([[3, 7, 9, 11], [1, 2, 5, 8]])
BAD = {
    "no sequences": (pb.VerifyRequest(mode=pb.VERIFY_MODE_GREEDY), "the request has no sequences"),
    "mode unset": (vreq(mode=pb.VERIFY_MODE_UNSPECIFIED), "mode is not set"),
    "mode unknown": (vreq(mode=9), "mode 9 is unknown"),
    "empty prefix": (vreq(vseq(prefix=[])), "sequence 0 prefix_ids: empty sequence"),
    "prefix out of vocab": (vreq(vseq(), vseq(prefix=[1, VOCAB])),
                            f"sequence 1 prefix_ids: token id {VOCAB} at position 1 is outside"),
    "empty draft": (vreq(vseq(draft=[])), "sequence 0: the draft is empty (γ = 0)"),
    "no draft": (vreq(pb.VerifySequence(prefix_ids=ids([1, 2]))), "γ = 0"),
    "draft too long": (vreq(vseq(draft=[4] * 17)),
                       "17 draft tokens exceed the teacher's max_draft_tokens=16"),
    "draft out of vocab": (vreq(vseq(), vseq(draft=[4, -1])),
                           "sequence 1 draft_ids: token id -1 at position 1 is outside"),
    "draft 2-D": (vreq(vseq(draft=[[4, 5]])), "draft_ids must be DTYPE_INT32 of shape [T]"),
    "over the context": (vreq(vseq(prefix=[1] * 250, draft=[4] * 6)),
                         f"250 prefix tokens + 6 draft tokens + 1 = 257 exceed the teacher's "
                         f"context of {CONTEXT} tokens"),
    "probs missing": (spec(vseq()), "sequence 0: draft_probs is required in VERIFY_MODE_SPECULATIVE"),
    "probs float16": (spec(vseq(draft_probs=pack(UNIFORM.astype(np.float16)))),
                      f"draft_probs must be DTYPE_FLOAT32 of shape [2, {VOCAB}]"),
    "probs too narrow": (spec(vseq(draft_probs=probs(UNIFORM[:, 1:]))),
                         f"got DTYPE_FLOAT32 [2, {VOCAB - 1}]"),
    "probs rows not G": (spec(vseq(draft_probs=probs(UNIFORM[:1]))), f"shape [2, {VOCAB}]"),
    "probs malformed": (spec(vseq(draft_probs=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, VOCAB]))),
                        "0 bytes do not match shape"),
    "probs negative": (spec(vseq(draft_probs=with_row(-0.01))),
                       "draft_probs[1, 0] = -0.01 is not a probability"),
    "probs nan": (spec(vseq(draft_probs=with_row(np.nan))), "draft_probs[1, 0] = nan"),
    "probs inf": (spec(vseq(draft_probs=with_row(np.inf))), "draft_probs[1, 0] = inf"),
    "probs do not sum to 1": (spec(vseq(draft_probs=probs(UNIFORM * [[1], [0.9]]))),
                              "draft_probs row 1 sums to 0.9; rows must sum to 1 (within 0.001)"),
    "top-k probs wrong shape": (spec(vseq(draft_probs=probs(np.full((2, 3), 0.1)),
                                          draft_topk_ids=TOPK_IDS)),
                                "draft_probs must be DTYPE_FLOAT32 of shape [2, 4]"),
    "top-k ids wrong rows": (spec(vseq(draft_probs=probs(np.full((3, 4), 0.1)),
                                       draft_topk_ids=ids(np.ones((3, 4))))),
                             "draft_topk_ids must be DTYPE_INT32 of shape [2, k]"),
    "top-k ids float": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                  draft_topk_ids=probs(np.ones((2, 4))))),
                        "draft_topk_ids must be DTYPE_INT32"),
    "top-k id out of vocab": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                        draft_topk_ids=ids([[3, 7, 9, 11], [1, 2, VOCAB, 8]]))),
                              f"draft_topk_ids: token id {VOCAB} at position [1, 2]"),
    "top-k id repeated": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                    draft_topk_ids=ids([[3, 7, 9, 11], [1, 5, 5, 8]]))),
                          "draft_topk_ids row 1 repeats token id 5"),
    "top-k probs over 1": (spec(vseq(draft_probs=probs([[0.1] * 4, [0.4] * 4]),
                                     draft_topk_ids=TOPK_IDS)),
                           "draft_probs row 1 sums to 1.6; rows must sum to at most 1"),
    "top-k probs negative": (spec(vseq(draft_probs=probs([[0.1] * 4, [0.1, -0.1, 0.1, 0.1]]),
                                       draft_topk_ids=TOPK_IDS)),
                             "draft_probs[1, 1] = -0.1"),
    "accept_top_k unset": (vreq(mode=pb.VERIFY_MODE_TOPK),
                           "accept_top_k=0 is out of range for VERIFY_MODE_TOPK"),
    "accept_top_k above vocab": (vreq(mode=pb.VERIFY_MODE_TOPK, accept_top_k=VOCAB + 1),
                                 f"between 1 and {VOCAB}"),
    "temperature zero": (vreq(temperature=0.0), "temperature=0.0 must be a finite number > 0"),
    "temperature nan": (vreq(temperature=float("nan")), "temperature=nan"),
    "top_k zero": (vreq(top_k=0), "top_k=0 is out of range"),
    "top_k above vocab": (vreq(top_k=VOCAB + 1), f"top_k={VOCAB + 1} is out of range"),
    "logprob dtype": (vreq(logprob_dtype=pb.DTYPE_INT32), "logprob_dtype"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_then_good_request(stub, name):
    bad, message = BAD[name]
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

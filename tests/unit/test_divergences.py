"""student_worker.losses.divergences against plain float64 references (explicit probabilities, sums)."""

import math

import pytest
import torch

from student_worker.losses import divergences as D

B, T, V = 3, 4, 7
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# plain references: one row (a list of probabilities) at a time, no log-space tricks


def kl_ref(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def mix_ref(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


REFERENCES = {
    "forward_kl": lambda p, q: kl_ref(p, q),
    "reverse_kl": lambda p, q: kl_ref(q, p),
    "jsd": lambda p, q, beta: (
        kl_ref(p, q) if beta == 0 else kl_ref(q, p) if beta == 1 else
        beta * kl_ref(p, mix_ref(beta, p, q)) + (1 - beta) * kl_ref(q, mix_ref(beta, p, q))
    ),
    "skew_kl": lambda p, q, alpha: kl_ref(p, mix_ref(alpha, p, q)),
    "skew_reverse_kl": lambda p, q, alpha: kl_ref(q, mix_ref(alpha, q, p)),
    "tv": lambda p, q: 0.5 * sum(abs(x - y) for x, y in zip(p, q)),
}


def reference(name, kwargs, student_probs, teacher_probs):
    """[..., V] probabilities -> [...] float64 divergence, one row at a time."""
    rows_p = teacher_probs.double().reshape(-1, teacher_probs.shape[-1]).tolist()
    rows_q = student_probs.double().reshape(-1, student_probs.shape[-1]).tolist()
    values = [REFERENCES[name](p, q, **kwargs) for p, q in zip(rows_p, rows_q)]
    return torch.tensor(values, dtype=torch.float64).reshape(teacher_probs.shape[:-1])


# --------------------------------------------------------------------------------------------
# cases: (name, hyperparameters, teacher may have zeros the student lacks, and vice versa).
# A KL(a‖b) is infinite where b = 0 < a, so each case only gets the zeros that keep it finite.

CASES = [
    ("forward_kl", {}, True, False),
    ("reverse_kl", {}, False, True),
    ("jsd", {"beta": 0.0}, True, False),
    ("jsd", {"beta": 0.1}, True, True),
    ("jsd", {"beta": 0.5}, True, True),
    ("jsd", {"beta": 0.9}, True, True),
    ("jsd", {"beta": 1.0}, False, True),
    ("skew_kl", {"alpha": 0.0}, True, False),
    ("skew_kl", {"alpha": 0.1}, True, True),
    ("skew_kl", {"alpha": 0.5}, True, True),
    ("skew_reverse_kl", {"alpha": 0.0}, False, True),
    ("skew_reverse_kl", {"alpha": 0.1}, True, True),
    ("skew_reverse_kl", {"alpha": 0.5}, True, True),
    ("tv", {}, True, True),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw, _, _ in CASES]


def zero_masks(gen, shape=(B, T, V)):
    """(shared, teacher_only, student_only) boolean masks of exact zeros; token 0 never zero."""
    u = torch.rand(shape, generator=gen)
    u[..., 0] = 1.0  # every row keeps some mass in both distributions
    return u < 0.2, (u >= 0.2) & (u < 0.35), (u >= 0.35) & (u < 0.5)


def logits_pair(seed, case=None, shape=(B, T, V)):
    """(student_logits, teacher_logits), float64, with the zeros `case` allows (None: no zeros)."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    if case is not None:
        _, _, teacher_zeros_ok, student_zeros_ok = case
        shared, teacher_only, student_only = zero_masks(gen, shape)
        teacher = teacher.masked_fill(shared | (teacher_only & teacher_zeros_ok), NEG_INF)
        student = student.masked_fill(shared | (student_only & student_zeros_ok), NEG_INF)
    return student, teacher


def close(actual, expected, atol=1e-12, rtol=1e-10):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def full(name, kwargs):
    return lambda student, teacher: D.DIVERGENCES[name](student, teacher, **kwargs)


def topk(name, kwargs):
    return lambda student, *teacher: D.DIVERGENCES_TOPK[name](student, *teacher, **kwargs)


def teacher_topk(teacher_logprobs, k):
    """The teacher's top-k (ids, logprobs) and the log of its remaining mass, summed explicitly."""
    top, ids = teacher_logprobs.topk(k, -1)
    outside = torch.ones_like(teacher_logprobs, dtype=torch.bool).scatter(-1, ids, False)
    tail = (teacher_logprobs.exp() * outside).sum(-1).log()
    return ids, top, tail


# --------------------------------------------------------------------------------------------
# full-distribution form


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_zeros", [False, True])
def test_full_matches_reference(case, with_zeros):
    name, kwargs, _, _ = case
    student_logits, teacher_logits = logits_pair(1, case if with_zeros else None)
    student_logits.requires_grad_(True)
    teacher_logits.requires_grad_(True)
    student, teacher = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    if with_zeros:
        assert torch.isneginf(student).any() and torch.isneginf(teacher).any()

    value = full(name, kwargs)(student, teacher)
    assert value.shape == (B, T) and value.dtype == torch.float64
    close(value, reference(name, kwargs, student.exp(), teacher.exp()))

    value.sum().backward()  # zero probabilities give zero gradients, not NaN
    assert torch.isfinite(student_logits.grad).all() and torch.isfinite(teacher_logits.grad).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_for_identical_and_nonnegative(case):
    name, kwargs, _, _ = case
    fn = full(name, kwargs)
    for seed in range(4):
        student_logits, teacher_logits = logits_pair(seed, case)
        student, teacher = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
        close(fn(teacher, teacher), torch.zeros(B, T, dtype=torch.float64), atol=1e-14, rtol=0)
        assert (fn(student, teacher) >= -1e-14).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_in_float32_out(case):
    name, kwargs, _, _ = case
    student, teacher = (x.log_softmax(-1) for x in logits_pair(2, case))
    value = full(name, kwargs)(student.float(), teacher.float())
    assert value.dtype == torch.float32
    close(value.double(), full(name, kwargs)(student, teacher), atol=1e-5, rtol=1e-5)


def test_total_variation_symmetric_and_at_most_one():
    student, teacher = (x.log_softmax(-1) for x in logits_pair(3, ("tv", {}, True, True)))
    close(D.total_variation(student, teacher), D.total_variation(teacher, student))
    assert (D.total_variation(student, teacher) <= 1).all()
    # disjoint supports: exactly 1
    p = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]], dtype=torch.float64).log()
    q = torch.tensor([[[0.0, 0.0, 0.3, 0.7]]], dtype=torch.float64).log()
    torch.testing.assert_close(D.total_variation(q, p), torch.ones(1, 1, dtype=torch.float64))


def test_jsd_symmetry():
    student, teacher = (x.log_softmax(-1) for x in logits_pair(4, ("jsd", {}, True, True)))
    close(D.generalized_jsd(student, teacher, 0.5), D.generalized_jsd(teacher, student, 0.5))
    # more generally, swapping p and q mirrors beta
    close(D.generalized_jsd(student, teacher, 0.2), D.generalized_jsd(teacher, student, 0.8))
    # beta = 0.5 is the ordinary Jensen-Shannon divergence, at most log 2
    assert (D.generalized_jsd(student, teacher, 0.5) <= math.log(2)).all()


def test_jsd_endpoints_are_the_kls():
    """TRL's (and the GKD paper's) convention: beta=0 is forward KL, beta=1 reverse KL, and in
    between beta*KL(p||m) + (1-beta)*KL(q||m), which shrinks towards 0 near either end."""
    student, teacher = (x.log_softmax(-1) for x in logits_pair(5))
    fkl, rkl = D.forward_kl(student, teacher), D.reverse_kl(student, teacher)
    assert torch.equal(D.generalized_jsd(student, teacher, 0.0), fkl)
    assert torch.equal(D.generalized_jsd(student, teacher, 1.0), rkl)
    for beta in (1e-3, 0.3, 1 - 1e-3):
        close(D.generalized_jsd(student, teacher, beta),
              reference("jsd", {"beta": beta}, student.exp(), teacher.exp()))
    assert (D.generalized_jsd(student, teacher, 1e-3) < 0.01 * fkl).all()


def test_skew_at_alpha_zero_is_plain_kl():
    student, teacher = (x.log_softmax(-1) for x in logits_pair(6))
    assert torch.equal(D.skew_kl(student, teacher, 0.0), D.forward_kl(student, teacher))
    assert torch.equal(D.skew_reverse_kl(student, teacher, 0.0), D.reverse_kl(student, teacher))
    # and skewing bounds the value by -log(alpha), even against a student with a hole
    student = student.clone()
    student[..., 0] = NEG_INF
    assert torch.isinf(D.forward_kl(student, teacher)).all()
    assert (D.skew_kl(student, teacher, 0.1) <= -math.log(0.1)).all()


def test_bad_hyperparameters():
    student, teacher = (x.log_softmax(-1) for x in logits_pair(7))
    with pytest.raises(ValueError):
        D.generalized_jsd(student, teacher, 1.5)
    with pytest.raises(ValueError):
        D.skew_kl(student, teacher, -0.1)


# --------------------------------------------------------------------------------------------
# top-k + tail form


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_topk_with_k_equal_v_is_the_full_divergence(case):
    name, kwargs, _, _ = case
    student, teacher = (x.log_softmax(-1) for x in logits_pair(8, case))
    gen = torch.Generator().manual_seed(8)
    ids = torch.rand(B, T, V, generator=gen).argsort(-1)  # every token, in a scrambled order
    tail = torch.full((B, T), NEG_INF, dtype=torch.float64)
    value = topk(name, kwargs)(student, ids, teacher.gather(-1, ids), tail)
    close(value, full(name, kwargs)(student, teacher))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_topk_matches_explicit_buckets(case, k):
    name, kwargs, _, _ = case
    student, teacher = (x.log_softmax(-1) for x in logits_pair(9))
    ids, top, tail = teacher_topk(teacher, k)

    # the K+1-bucket distributions, built from the full probabilities
    p, q = teacher.exp(), student.exp()
    outside = torch.ones_like(p, dtype=torch.bool).scatter(-1, ids, False)
    p_buckets = torch.cat([p.gather(-1, ids), (p * outside).sum(-1, keepdim=True)], -1)
    q_buckets = torch.cat([q.gather(-1, ids), (q * outside).sum(-1, keepdim=True)], -1)

    value = topk(name, kwargs)(student, ids, top, tail)
    assert value.shape == (B, T)
    close(value, reference(name, kwargs, q_buckets, p_buckets))
    # coarsening can only lose information
    assert (value <= full(name, kwargs)(student, teacher) + 1e-12).all()


def test_topk_buckets_keep_a_tiny_student_tail():
    # float32, top-3 hold all but ~e^-40 of the student's mass: 1 - sum would round to 0
    student = torch.tensor([0.0, 0.0, 0.0, -40.0, -41.0, -42.0]).log_softmax(-1).reshape(1, 1, 6)
    ids = torch.tensor([[[2, 0, 1]]], dtype=torch.int32)  # the wire's int32 is accepted
    top = torch.log(torch.full((1, 1, 3), 0.3))
    tail = torch.log(torch.tensor([[0.1]]))
    student_buckets, teacher_buckets = D.topk_buckets(student, ids, top, tail)
    assert student_buckets.shape == teacher_buckets.shape == (1, 1, 4)
    exact = torch.tensor([0.0, 0.0, 0.0, -40.0, -41.0, -42.0], dtype=torch.float64).log_softmax(-1)
    close(student_buckets[0, 0, 3].double(), exact[3:].logsumexp(-1), atol=0, rtol=1e-6)
    torch.testing.assert_close(teacher_buckets, torch.cat([top, tail[..., None]], -1))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_topk_without_any_tail_mass_has_finite_gradients(case):
    # Both distributions live on the teacher's top-k only: both tails are exactly zero.
    name, kwargs, _, _ = case
    student_logits, teacher_logits = logits_pair(10)
    inside = torch.zeros(B, T, V, dtype=torch.bool)
    inside[..., [1, 4, 5]] = True
    student_logits = student_logits.masked_fill(~inside, NEG_INF).requires_grad_(True)
    teacher = teacher_logits.masked_fill(~inside, NEG_INF).log_softmax(-1)
    ids = torch.tensor([5, 1, 4]).expand(B, T, 3)
    student = student_logits.log_softmax(-1)
    tail = torch.full((B, T), NEG_INF, dtype=torch.float64)

    value = topk(name, kwargs)(student, ids, teacher.gather(-1, ids), tail)
    close(value, full(name, kwargs)(student, teacher))
    value.sum().backward()
    assert torch.isfinite(student_logits.grad).all()


# --------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_full(case):
    name, kwargs, _, _ = case
    student_logits, teacher_logits = logits_pair(11, case, shape=(2, 2, 5))
    teacher = teacher_logits.log_softmax(-1)
    fn = full(name, kwargs)
    # student zeros are -inf logits: perturbing them changes nothing, and their gradient must be 0
    assert torch.autograd.gradcheck(lambda x: fn(x.log_softmax(-1), teacher),
                                    (student_logits.requires_grad_(True),))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("k", [2, 5])
def test_gradcheck_topk(case, k):
    name, kwargs, _, _ = case
    student_logits, teacher_logits = logits_pair(12, shape=(2, 2, 5))
    ids, top, tail = teacher_topk(teacher_logits.log_softmax(-1), k)
    if k == 5:
        tail = torch.full_like(tail, NEG_INF)
    fn = topk(name, kwargs)
    assert torch.autograd.gradcheck(lambda x: fn(x.log_softmax(-1), ids, top, tail),
                                    (student_logits.requires_grad_(True),))


# --------------------------------------------------------------------------------------------
# sampled estimator, masked mean, dispatcher


def test_sampled_reverse_kl_is_unbiased():
    student, teacher = (x.log_softmax(-1) for x in logits_pair(13))
    # E_{x~q}[estimator(x)], enumerating every token x with its weight q(x)
    expectation = sum(student[..., v].exp() * D.sampled_reverse_kl(student[..., v], teacher[..., v])
                      for v in range(V))
    torch.testing.assert_close(expectation, D.reverse_kl(student, teacher), atol=1e-12, rtol=1e-10)
    assert D.sampled_reverse_kl(student[..., 0], teacher[..., 0]).shape == (B, T)


def test_masked_mean_token_and_sequence():
    nan = float("nan")
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, nan, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    token = D.masked_mean(values, mask, "token")
    torch.testing.assert_close(token, torch.tensor((1 + 2 + 6) / 3))
    (grad,) = torch.autograd.grad(token, values)
    torch.testing.assert_close(grad, mask / 3.0)

    # per sequence: mean(1.5, 6); the third sequence has no tokens and does not count
    sequence = D.masked_mean(values, mask.bool(), "sequence")
    torch.testing.assert_close(sequence, torch.tensor((1.5 + 6.0) / 2))
    (grad,) = torch.autograd.grad(sequence, values)
    torch.testing.assert_close(grad, torch.tensor([[0.25, 0.25, 0], [0, 0, 0.5], [0, 0, 0]]))

    with pytest.raises(ValueError):
        D.masked_mean(values, mask, "batch")


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_masked_mean_of_empty_mask_is_zero(mode):
    values = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    out = D.masked_mean(values, torch.zeros(2, 2, dtype=torch.bool), mode)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(values.grad, torch.zeros(2, 2))


def test_dispatcher():
    names = {"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"}
    assert set(D.DIVERGENCES) == set(D.DIVERGENCES_TOPK) == names
    student, teacher = (x.log_softmax(-1) for x in logits_pair(14))
    ids, top, tail = teacher_topk(teacher, 3)
    assert torch.equal(D.divergence("jsd", student, teacher, beta=0.3),
                       D.generalized_jsd(student, teacher, 0.3))
    assert torch.equal(D.divergence("skew_reverse_kl", student, teacher, alpha=0.2),
                       D.skew_reverse_kl(student, teacher, 0.2))
    assert torch.equal(D.divergence("tv", student, teacher, beta=0.3, alpha=0.2),
                       D.total_variation(student, teacher))
    assert torch.equal(
        D.divergence("skew_kl", student, teacher_topk_ids_BTK=ids, teacher_topk_logprobs_BTK=top,
                     teacher_tail_logprobs_BT=tail, alpha=0.2),
        D.skew_kl_topk(student, ids, top, tail, alpha=0.2))
    with pytest.raises(ValueError):
        D.divergence("kl", student, teacher)
    with pytest.raises(ValueError):
        D.divergence("forward_kl", student)
    with pytest.raises(ValueError):
        D.divergence("forward_kl", student, teacher, teacher_topk_ids_BTK=ids,
                     teacher_topk_logprobs_BTK=top, teacher_tail_logprobs_BT=tail)

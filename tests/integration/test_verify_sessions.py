"""Verify sessions: a round over a session runs only its new tokens, answers equal those without
sessions, and caches stay per tenant, within the budget and no longer than the session.

Real servers on 127.0.0.1: the tiny teacher with a tenants file and a 1 MiB session budget.
"""

import hashlib

import grpc
import pytest
import torch

from distill.client.teacher_client import TeacherClient
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from student_worker.rollouts.speculative import speculative_generate
from tests.helpers import TeacherProcess, random_sequences, write_tenants
from tests.helpers.servers import metric_families

KEYS = {name: f"secret-{name}" for name in ("alpha", "beta")}


def metric(server, name: str, **labels) -> float:
    family = metric_families(server).get(name.removesuffix("_total"))
    return sum(s.value for s in family.samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items())) if family else 0.0


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tenants = write_tenants(tmp_path_factory.mktemp("tenants") / "tenants.yaml", *[
        {"name": name, "token_sha256": hashlib.sha256(key.encode()).hexdigest()} for name, key in KEYS.items()])
    process = TeacherProcess(tiny_model_dir, "--tenants", str(tenants), "--max-wait-ms", "0",
                             "--prefix-cache-mb", "1")
    process.wait_serving()
    yield process
    assert process.terminate() == 0, process.log()


@pytest.fixture(scope="module")
def alpha(server):
    with TeacherClient(server.target, api_key=KEYS["alpha"], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from scripts.tiny_model import make_tiny_model

    return AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("draft"), seed=5)).eval()


def forwarded(server) -> float:
    """Tokens the teacher really ran: those sent, less those a session's cache saved."""
    return metric(server, "teacher_tokens_forward_total") - metric(server, "teacher_session_tokens_reused_total")


@pytest.mark.parametrize("mode", ["speculative", "topk", "greedy"])
def test_sessions_change_the_cost_not_the_answer(server, alpha, draft_model, mode):
    """Speculative decoding of 40 tokens in rounds of 4, with and without sessions: the same
    tokens, verdicts and teacher arrays (to float32 rounding), for fewer tokens run."""
    assert alpha.info().features.verify_sessions
    prompts = random_sequences(3, [30, 9, 17], 512, seed=3)
    kw = dict(gamma=4, max_new_tokens=40, mode=mode, accept_top_k=3, temperature=1.0, eos_ids=[2], pad_id=0,
              seed=7, score_top_k=6)
    runs, cost = {}, {}
    for sessions in (False, True):
        before = forwarded(server)
        torch.manual_seed(0)   # the student's drafts
        runs[sessions] = speculative_generate(draft_model, alpha, prompts, sessions=sessions, **kw)
        cost[sessions] = forwarded(server) - before
    for plain, cached in zip(runs[False], runs[True]):
        assert cached.completion == plain.completion
        assert (cached.drafted, cached.accepted, cached.teacher_calls) == (plain.drafted, plain.accepted,
                                                                          plain.teacher_calls)
        assert torch.equal(cached.teacher.topk_ids, plain.teacher.topk_ids)
        for field in ("topk_logprobs", "token_logprobs", "tail_logprobs"):
            torch.testing.assert_close(getattr(cached.teacher, field), getattr(plain.teacher, field),
                                       atol=1e-5, rtol=0, equal_nan=True)
    calls = max(r.teacher_calls for r in runs[True])
    assert calls >= 4
    assert cost[True] < 0.6 * cost[False], cost


def verify(client, prefix, draft, key, end=False):
    [out] = client.verify([prefix], [draft], mode="greedy", session_keys=[key], end_sessions=[end])
    return out


def test_a_key_is_never_read_by_another_tenant(server, alpha):
    prefix, draft = random_sequences(2, [40, 3], 512, seed=4)
    verify(alpha, prefix, draft, "shared-key")
    hits = metric(server, "teacher_session_hits_total", tenant="beta")
    with TeacherClient(server.target, api_key=KEYS["beta"], timeout=60) as beta:
        misses = metric(server, "teacher_session_misses_total", tenant="beta")
        out = verify(beta, prefix + draft[:1], draft[1:], "shared-key")   # would reuse alpha's 40 tokens
        assert metric(server, "teacher_session_misses_total", tenant="beta") == misses + 1
        assert metric(server, "teacher_session_hits_total", tenant="beta") == hits
        [plain] = beta.verify([prefix + draft[:1]], [draft[1:]], mode="greedy")
    assert (out.num_accepted, out.next_token) == (plain.num_accepted, plain.next_token)
    before = metric(server, "teacher_session_hits_total", tenant="alpha")
    verify(alpha, prefix + draft[:1], draft[1:], "shared-key")       # alpha's own cache is still there
    assert metric(server, "teacher_session_hits_total", tenant="alpha") == before + 1


def test_a_session_ends_when_the_caller_says_so(server, alpha):
    prefix, draft = random_sequences(2, [40, 3], 512, seed=5)
    verify(alpha, prefix, draft, "ending", end=True)
    misses = metric(server, "teacher_session_misses_total", tenant="alpha")
    verify(alpha, prefix + draft[:1], draft[1:], "ending")
    assert metric(server, "teacher_session_misses_total", tenant="alpha") == misses + 1


def test_a_flood_of_sessions_stays_within_the_budget(server, alpha):
    """120 sessions of 250 tokens (far over 1 MiB of tiny-model cache): the oldest are evicted,
    the held bytes never pass the budget, and the newest session still reuses its cache."""
    evicted = metric(server, "teacher_session_evictions_total", tenant="alpha", reason="budget")
    sequences = random_sequences(120, [250], 512, seed=6)
    for start in range(0, 120, 12):
        alpha.verify([s[:-2] for s in sequences[start:start + 12]], [s[-2:] for s in sequences[start:start + 12]],
                     mode="greedy", session_keys=[f"flood-{i}" for i in range(start, start + 12)])
        assert 0 < metric(server, "teacher_session_bytes") <= 1 << 20
    assert metric(server, "teacher_session_evictions_total", tenant="alpha", reason="budget") > evicted
    hits = metric(server, "teacher_session_hits_total", tenant="alpha")
    last = sequences[-1]
    verify(alpha, last[:-1], [5], "flood-119")
    assert metric(server, "teacher_session_hits_total", tenant="alpha") == hits + 1


def test_a_key_too_long_is_refused_and_the_server_keeps_serving(server, alpha):
    ids = lambda *values: pack(torch.tensor(values, dtype=torch.int32))  # noqa: E731
    request = pb.VerifyRequest(mode=pb.VERIFY_MODE_GREEDY, sequences=[pb.VerifySequence(
        prefix_ids=ids(1, 2, 3), draft_ids=ids(4), session_key="k" * 129)])
    with pytest.raises(grpc.RpcError) as err:
        alpha.stub.Verify(request, metadata=(("authorization", f"Bearer {KEYS['alpha']}"),), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence 0: session_key is 129 bytes; keys are at most 128" in err.value.details()
    assert verify(alpha, [1, 2, 3], [4], "k" * 128).num_accepted in (0, 1)


def test_no_budget_no_sessions(tiny_model_dir):
    process = TeacherProcess(tiny_model_dir, "--prefix-cache-mb", "0")
    try:
        process.wait_serving()
        with TeacherClient(process.target, timeout=60) as client:
            assert not client.info().features.verify_sessions
            verify(client, [1, 2, 3, 4], [5, 6], "ignored")
            verify(client, [1, 2, 3, 4, 5], [6], "ignored")
        assert metric(process, "teacher_session_misses_total") == metric(process, "teacher_session_hits_total") == 0
    finally:
        assert process.terminate() == 0, process.log()

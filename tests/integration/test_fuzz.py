"""Random and malformed requests (hypothesis) into the real server's Score, Verify, Generate and
Info, through a raw stub that skips the client's checks.

Every answer is OK or a refusal with an expected status code and a message (never INTERNAL or
UNKNOWN), and after each run the server still gives, bit for bit, the answers it gave before.
Half of the requests are valid everywhere and must reach the model; in the other half each
field is hostile one time in four. Each run asserts both kinds of outcome happened.

CI uses the "ci" profile: derandomized (the same examples every run), no example database.
For a longer random hunt: HYPOTHESIS_PROFILE=hunt pytest tests/test_fuzz.py
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from distill.tensors import pack, unpack
from distill.v1 import teacher_pb2 as pb
from tests.helpers import assert_refused

VOCAB, CONTEXT, MAX_DRAFT = 512, 256, 16        # the tiny model's, checked against Info below
EXPECTED = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "OUT_OF_RANGE"}

settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True,
    # a request is a round trip to a server process; some examples are big on purpose
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example])
settings.register_profile("hunt", parent=settings.get_profile("ci"), max_examples=2000,
                          derandomize=False)
fuzz = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --- values: valid ones, and hostile ones (anything the wire type allows) ---

INT32, UINT32 = st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(0, 2 ** 32 - 1)
UINT64, INT64 = st.integers(0, 2 ** 64 - 1), st.integers(-2 ** 63, 2 ** 63 - 1)
FLOAT32 = st.floats(width=32)                   # nan, ±inf, -0.0, subnormals included
DTYPES = st.sampled_from(list(pb.DType.values())) | INT32   # known and unknown enum values


def pick(valid, hostile, on: bool):
    """In a hostile request (`on`), a field is hostile one time in four; else always valid."""
    return st.one_of(valid, valid, valid, hostile) if on else valid


def maybe(strategy):
    """An optional field: unset (None) or set."""
    return st.none() | strategy


def ids(min_size, max_size):
    return st.lists(st.integers(0, VOCAB - 1), min_size=min_size, max_size=max_size).map(
        lambda xs: pack(np.array(xs, np.int32)))


def _relabel(t: pb.Tensor, dtype: int) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=t.shape, data=t.data)       # same bytes, another dtype


def _resize(t: pb.Tensor, by: int) -> pb.Tensor:
    data = t.data[:by] if by < 0 else t.data + bytes(by)            # cut or padded: odd lengths
    return pb.Tensor(dtype=t.dtype, shape=t.shape, data=data)


def _odd_shape(dtype: int, shape: list[int]) -> pb.Tensor:
    """A known dtype with bytes to match the shape where that is small, so the shape itself is
    what gets checked: negative, huge with no elements, more dimensions than numpy's 64."""
    size = np.prod(np.array(shape, dtype=object)) * 4 if shape else 4   # 2-byte float16: a mismatch
    return pb.Tensor(dtype=dtype, shape=shape, data=bytes(size) if 0 <= size <= 4096 else b"")


def hostile_tensors():
    """Well-formed arrays of any value and dtype, 1-D or 2-D (empty too), and malformed ones:
    relabelled, cut or padded bytes, odd shapes, random dtype/shape/bytes, a sequence at the
    context's edge, and an array over the server's 4 MiB message limit."""
    elements = {np.int32: INT32, np.float32: FLOAT32, np.float16: st.floats(width=16)}
    arrays = st.sampled_from(list(elements)).flatmap(lambda dt: st.one_of(
        st.lists(elements[dt], max_size=40).map(lambda xs: np.array(xs, dt)),
        st.tuples(st.integers(0, 6), st.integers(0, 6)).flatmap(lambda s: st.lists(
            elements[dt], min_size=s[0] * s[1], max_size=s[0] * s[1]).map(
            lambda xs: np.array(xs, dt).reshape(s)))))
    good = arrays.map(pack)
    dims = st.integers(-2, 8) | INT64 | st.sampled_from([0, 2 ** 31, 2 ** 62, 2 ** 63 - 1])
    return st.one_of(
        good,
        st.builds(_relabel, good, DTYPES),
        st.builds(_resize, good, st.integers(-5, 5)),
        st.builds(_odd_shape, st.sampled_from([1, 2, 3]),
                  st.lists(dims, max_size=4) | st.lists(st.integers(0, 1), min_size=60, max_size=70)),
        st.builds(pb.Tensor, dtype=DTYPES, shape=st.lists(dims, max_size=4),
                  data=st.binary(max_size=64)),
        st.integers(CONTEXT - 1, CONTEXT + 2).map(lambda n: pack(np.zeros(n, np.int32))),
        st.just(pb.Tensor(dtype=pb.DTYPE_INT32, shape=[5 << 18], data=bytes(5 << 20))),
    )


TENSORS = hostile_tensors()


def length(t: pb.Tensor) -> int:
    """Elements of a well-formed 1-D int32 tensor (a valid companion field can be drawn for
    it), else 2."""
    return len(t.data) // 4 if t.dtype == pb.DTYPE_INT32 and len(t.shape) == 1 else 2


def rows_of(n: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, c), dtype=np.int32)


@st.composite
def score_sequences(draw, on: bool):
    token_ids = draw(pick(ids(2, 40), TENSORS, on))
    T = length(token_ids)
    seq = pb.ScoreSequence(token_ids=token_ids,
                           score_from=draw(pick(st.integers(1, max(T - 1, 1)), UINT32, on)))
    if draw(st.booleans()):
        n = max(T - seq.score_from, 0)
        valid = st.builds(rows_of, st.just(n), st.integers(1, 8), UINT32).map(pack)
        seq.candidate_ids.CopyFrom(draw(pick(valid, TENSORS, on)))
    return seq


@st.composite
def verify_sequences(draw, on: bool):
    seq = pb.VerifySequence(prefix_ids=draw(pick(ids(1, 20), TENSORS, on)),
                            draft_ids=draw(pick(ids(1, MAX_DRAFT), TENSORS, on)))
    # draft probabilities for G positions: at least one, and no more than a draft may have
    G = min(max(length(seq.draft_ids), 1), MAX_DRAFT + 1)
    form = draw(st.sampled_from(["none", "full", "top-k"] if on else ["full", "top-k"]))
    rng = np.random.default_rng(draw(UINT32))
    if form == "full":                                   # q as full [G, V] rows
        full = pack(rng.dirichlet(np.ones(VOCAB), G), "float32")
        seq.draft_probs.CopyFrom(draw(pick(st.just(full), TENSORS, on)))
    elif form == "top-k":                                # q as [G, k] ids and their probabilities
        k = draw(st.integers(1, 8))
        topk_ids = np.stack([rng.permutation(VOCAB)[:k] for _ in range(G)]).astype(np.int32)
        probs = rng.dirichlet(np.ones(k + 1), G)[:, :k].astype(np.float32)
        probs[0, 0] = draw(pick(st.just(probs[0, 0]), FLOAT32, on))
        seq.draft_topk_ids.CopyFrom(draw(pick(st.just(pack(topk_ids)), TENSORS, on)))
        seq.draft_probs.CopyFrom(draw(pick(st.just(pack(probs)), TENSORS, on)))
    return seq


def common(on: bool) -> dict:
    """Fields Score and Verify share."""
    return dict(top_k=maybe(pick(st.integers(1, VOCAB), INT32, on)),
                temperature=maybe(pick(st.floats(0.0625, 4, width=32), FLOAT32, on)),
                logprob_dtype=pick(st.sampled_from([0, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16]), DTYPES, on))


def score_requests(on: bool):
    return st.builds(pb.ScoreRequest, sequences=st.lists(score_sequences(on), min_size=int(not on),
                                                         max_size=3), **common(on))


@st.composite
def packed_score_sequences(draw, on: bool):
    """Valid sequences packed into one block of arrays; in a hostile request each array (the ids,
    the lengths, the score_from, the candidates) is any tensor one time in four."""
    seqs = draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=40),
                         min_size=1, max_size=4))
    lengths = [len(seq) for seq in seqs]
    starts = [draw(st.integers(1, n - 1)) for n in lengths]
    arrays = [np.array(sum(seqs, []), np.int32), np.array(lengths, np.int32), np.array(starts, np.int32)]
    packed = pb.PackedScoreSequences(**{name: draw(pick(st.just(pack(array)), TENSORS, on)) for name, array
                                        in zip(("token_ids", "lengths", "score_from"), arrays)})
    if draw(st.booleans()):
        valid = st.builds(rows_of, st.just(sum(lengths) - sum(starts)), st.integers(1, 8), UINT32).map(pack)
        packed.candidate_ids.CopyFrom(draw(pick(valid, TENSORS, on)))
    return packed


def packed_score_requests(on: bool):
    return st.builds(pb.ScoreRequest, packed=packed_score_sequences(on), **common(on))


def verify_requests(on: bool):
    return st.builds(pb.VerifyRequest, sequences=st.lists(verify_sequences(on), min_size=int(not on),
                                                          max_size=3),
                     mode=pick(st.sampled_from([1, 2, 3]), INT32, on), seed=maybe(UINT64),
                     accept_top_k=pick(st.integers(1, VOCAB), INT32, on), **common(on))


def generate_requests(on: bool):
    return st.builds(
        pb.GenerateRequest, prompt_ids=st.lists(pick(ids(1, 20), TENSORS, on), min_size=int(not on),
                                                max_size=3),
        num_samples=pick(st.integers(0, 4), UINT32, on),
        temperature=maybe(pick(st.floats(0, 2, width=32), FLOAT32, on)),
        top_p=maybe(pick(st.floats(0.0625, 1, width=32), FLOAT32, on)),
        max_new_tokens=pick(st.integers(1, 8), UINT32, on),
        stop_token_ids=st.lists(pick(st.integers(0, VOCAB - 1), INT32, on), max_size=3),
        seed=maybe(UINT64),
        logprob_dtype=pick(st.sampled_from([0, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16]), DTYPES, on))


# half of the requests are hostile somewhere, half valid everywhere (those must reach the model)
REQUESTS = {"Score": st.booleans().flatmap(score_requests),
            "Score packed": st.booleans().flatmap(packed_score_requests),
            "Verify": st.booleans().flatmap(verify_requests),
            "Generate": st.booleans().flatmap(generate_requests),
            "Info": st.just(pb.InfoRequest())}


def results_expected(request) -> int:
    if isinstance(request, pb.GenerateRequest):
        return len(request.prompt_ids) * (request.num_samples or 1)
    if isinstance(request, pb.ScoreRequest) and request.HasField("packed"):
        return unpack(request.packed.lengths).size
    return len(getattr(request, "sequences", ()))


def outcome(call, rpc: str, request) -> str:
    """The status code name of `call(request)`, after checking the answer is one the contract
    allows."""
    try:
        response = call(request, timeout=120)
    except grpc.RpcError as err:
        code = err.code().name
        assert code in EXPECTED, f"{rpc} answered {code}: {err.details()}\nrequest: {request!r:.2000}"
        assert err.details(), f"{rpc} answered {code} without a message"
        return code
    results = {"Score": "results", "Verify": "results", "Generate": "samples"}.get(rpc)
    if isinstance(request, pb.ScoreRequest) and request.HasField("packed"):
        assert not response.results
        assert list(response.offsets.shape) == [results_expected(request) + 1]
    elif results:
        assert len(getattr(response, results)) == results_expected(request)
    for array in float_arrays(response):
        assert not np.isnan(array).any(), f"{rpc} answered OK with NaN\nrequest: {request!r:.2000}"
    return "OK"


def float_arrays(message: Message):
    """Every float array in a message, unpacked."""
    for _, value in message.ListFields():
        repeated = isinstance(value, Iterable) and not isinstance(value, (str, bytes))
        for item in value if repeated else [value]:
            if isinstance(item, pb.Tensor) and item.dtype != pb.DTYPE_INT32:
                yield unpack(item)
            elif isinstance(item, Message):
                yield from float_arrays(item)


# --- a good request of each kind, asked before and after each fuzz run ---

IDS = pack(np.arange(1, 11, dtype=np.int32))
DRAFT = pack(np.arange(3, dtype=np.int32))
GOOD = {
    "Score": pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=IDS, score_from=3)], top_k=8),
    "Score packed": pb.ScoreRequest(packed=pb.PackedScoreSequences(
        token_ids=IDS, lengths=pack(np.array([4, 6], np.int32)),
        score_from=pack(np.array([1, 3], np.int32))), top_k=8),
    "Verify": pb.VerifyRequest(sequences=[pb.VerifySequence(prefix_ids=IDS, draft_ids=DRAFT)],
                               mode=pb.VERIFY_MODE_GREEDY, top_k=4),
    "Generate": pb.GenerateRequest(prompt_ids=[pack(np.arange(1, 6, dtype=np.int32))], num_samples=2,
                                   max_new_tokens=6, seed=7),
    "Info": pb.InfoRequest(),
}


def answers(stub) -> dict[str, bytes]:
    return {rpc: getattr(stub, rpc.split()[0])(request, timeout=60).SerializeToString()
            for rpc, request in GOOD.items()}


@pytest.fixture(scope="module")
def before(stub):
    info = stub.Info(pb.InfoRequest(), timeout=60)
    assert (info.vocab_size, info.max_context, info.max_draft_tokens) == (VOCAB, CONTEXT, MAX_DRAFT)
    return answers(stub)


@pytest.mark.parametrize("rpc", list(REQUESTS))
def test_fuzzed_requests(stub, before, rpc):
    codes = Counter()

    @fuzz
    @given(request=REQUESTS[rpc])
    def run(request):
        codes[outcome(getattr(stub, rpc.split()[0]), rpc.split()[0], request)] += 1

    run()
    if rpc != "Info":   # the strategies do reach both the model and the checks
        assert codes["OK"] >= 5 and codes["INVALID_ARGUMENT"] >= 5, codes
    assert answers(stub) == before


TENSOR_FIELDS = {   # an otherwise valid request around one tensor field
    "Score token_ids": lambda t: pb.ScoreRequest(sequences=[pb.ScoreSequence(
        token_ids=t, score_from=1)]),
    "Score candidate_ids": lambda t: pb.ScoreRequest(sequences=[pb.ScoreSequence(
        token_ids=IDS, score_from=1, candidate_ids=t)]),
    "Score packed.token_ids": lambda t: _packed(token_ids=t),
    "Score packed.lengths": lambda t: _packed(lengths=t),
    "Score packed.score_from": lambda t: _packed(score_from=t),
    "Score packed.candidate_ids": lambda t: _packed(candidate_ids=t),
    "Verify prefix_ids": lambda t: pb.VerifyRequest(sequences=[pb.VerifySequence(
        prefix_ids=t, draft_ids=DRAFT)], mode=pb.VERIFY_MODE_GREEDY),
    "Verify draft_ids": lambda t: pb.VerifyRequest(sequences=[pb.VerifySequence(
        prefix_ids=IDS, draft_ids=t)], mode=pb.VERIFY_MODE_GREEDY),
    "Verify draft_probs": lambda t: pb.VerifyRequest(sequences=[pb.VerifySequence(
        prefix_ids=IDS, draft_ids=DRAFT, draft_probs=t)], mode=pb.VERIFY_MODE_SPECULATIVE),
    "Verify draft_topk_ids": lambda t: pb.VerifyRequest(sequences=[pb.VerifySequence(
        prefix_ids=IDS, draft_ids=DRAFT, draft_topk_ids=t,
        draft_probs=pack(np.full((3, 2), 0.25, np.float32)))], mode=pb.VERIFY_MODE_SPECULATIVE),
    "Generate prompt_ids": lambda t: pb.GenerateRequest(prompt_ids=[t], max_new_tokens=2),
}


def _packed(**field) -> pb.ScoreRequest:
    """GOOD's packed Score request with one field replaced."""
    request = pb.ScoreRequest()
    request.CopyFrom(GOOD["Score packed"])
    for name, tensor in field.items():
        getattr(request.packed, name).CopyFrom(tensor)
    return request


def test_fuzzed_tensor_fields(stub, before):
    """Every tensor field, hostile, in an otherwise valid request: the densest test of unpacking."""
    codes = Counter()

    @fuzz
    @given(field=st.sampled_from(list(TENSOR_FIELDS)), tensor=TENSORS)
    def run(field, tensor):
        rpc = field.split()[0]
        codes[outcome(getattr(stub, rpc), rpc, TENSOR_FIELDS[field](tensor))] += 1

    run()
    assert codes["INVALID_ARGUMENT"] >= 20, codes
    assert answers(stub) == before


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        if out:
            out[at % len(out)] = value
    return bytes(out[:len(out) - cut] if cut < len(out) else out)


@pytest.mark.parametrize("rpc", list(REQUESTS))
def test_random_bytes_as_requests(teacher, stub, before, rpc):
    """Bytes that parse as the rpc's request message (random, or a fuzzed request with bytes
    overwritten and its tail cut), sent as they are: the server parses them itself."""
    request_class = type(GOOD[rpc])
    name = rpc.split()[0]
    response_class = getattr(pb, f"{name}Response")
    channel = grpc.insecure_channel(teacher.target, options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.unary_unary(f"/distill.v1.Teacher/{name}",
                               response_deserializer=response_class.FromString)
    codes = Counter()

    @fuzz
    @given(data=st.binary(max_size=200) | st.builds(
        _mutate, REQUESTS[rpc].map(lambda r: r.SerializeToString()),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
        st.integers(0, 8)))
    def run(data):
        try:
            request = request_class.FromString(data)
        except DecodeError:
            assume(False)
        codes[outcome(lambda _, timeout: call(data, timeout=timeout), name, request)] += 1

    run()
    channel.close()
    assert sum(codes.values()) >= 20, codes
    assert answers(stub) == before


def test_bytes_that_do_not_parse_get_invalid_argument(teacher):
    with grpc.insecure_channel(teacher.target) as channel:
        assert_refused(channel.unary_unary("/distill.v1.Teacher/Score"), b"\xff\xff\xff",
                       "the request is not a valid distill.v1.ScoreRequest message")

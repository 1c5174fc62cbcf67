"""Score's packed form (one array per field for the whole request) against the per-sequence form,
and its refusals, on the real server (the pieces without a server: tests/unit/test_packed.py)."""

import numpy as np
import pytest
import torch

from distill.client.teacher_client import score_request, scores_from_response
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from tests.helpers import assert_refused, ragged_sequences

VOCAB, CONTEXT = 512, 256


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("with_candidates", [False, True])
def test_packed_answers_equal_the_per_sequence_form(stub, dtype, with_candidates):
    seqs, starts = ragged_sequences(0, 23)
    g = np.random.default_rng(1)
    cands = [g.integers(0, VOCAB, (len(s) - f, 3)) for s, f in zip(seqs, starts)] if with_candidates else None
    packed = score_request(seqs, starts, 7, 0.8, cands, dtype, packed=True)
    per_seq = score_request(seqs, starts, 7, 0.8, cands, dtype, packed=False)
    assert packed.HasField("packed") and not packed.sequences
    assert len(per_seq.sequences) == 23 and not per_seq.HasField("packed")
    response = stub.Score(packed, timeout=60)
    assert not response.results and list(response.offsets.shape) == [24]
    a, b = scores_from_response(response), scores_from_response(stub.Score(per_seq, timeout=60))
    assert len(a) == len(b) == 23
    for x, y, s, f in zip(a, b, seqs, starts):
        assert x.topk_ids.shape == (len(s) - f, 7)
        for name in ("topk_ids", "topk_logprobs", "token_logprobs", "tail_logprobs", "candidate_logprobs"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None and v is None and not with_candidates) or torch.equal(u, v), name


def test_a_packed_request_over_the_batch_budget_equals_the_per_sequence_form(stub):
    """The shared teacher's passes hold 2,048 padded tokens; these 150 ragged sequences hold
    about 3,100 real ones. The request is sorted by length and cut into passes on the server, and
    its answer comes back in the request's order."""
    seqs, starts = ragged_sequences(3, 150)
    assert sum(map(len, seqs)) > 2048
    g = np.random.default_rng(4)
    cands = [g.integers(0, VOCAB, (len(s) - f, 2)) for s, f in zip(seqs, starts)]
    a = scores_from_response(stub.Score(score_request(seqs, starts, 5, 1.0, cands, "float32"), timeout=60))
    b = scores_from_response(stub.Score(score_request(seqs, starts, 5, 1.0, cands, "float32",
                                                      packed=False), timeout=60))
    for x, y in zip(a, b):
        for name in ("topk_ids", "topk_logprobs", "token_logprobs", "tail_logprobs", "candidate_logprobs"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), atol=1e-5, rtol=0)


def test_per_sequence_candidates_of_different_widths_come_back_at_their_own_width(stub):
    """The per-sequence form is packed into one item too: candidate blocks are padded to the
    widest and each answer is cut back to its own width (or None)."""
    seqs, starts = ragged_sequences(6, 4)
    g = np.random.default_rng(7)
    cands = [g.integers(0, VOCAB, (len(s) - f, c)) if c else None
             for s, f, c in zip(seqs, starts, (1, 3, 0, 2))]
    together = scores_from_response(stub.Score(score_request(seqs, starts, 4, 1.0, cands, "float32"),
                                               timeout=60))
    for seq, start, cand, got in zip(seqs, starts, cands, together):
        alone = scores_from_response(stub.Score(score_request(
            [seq], [start], 4, 1.0, None if cand is None else [cand], "float32"), timeout=60))[0]
        assert (got.candidate_logprobs is None) == (cand is None)
        for name in ("topk_logprobs", "token_logprobs", "candidate_logprobs"):
            if getattr(alone, name) is not None:
                torch.testing.assert_close(getattr(got, name), getattr(alone, name), atol=1e-5, rtol=0)


def packed(ids, lengths, score_from, **kw) -> pb.ScoreRequest:
    return pb.ScoreRequest(packed=pb.PackedScoreSequences(
        token_ids=pack(np.asarray(ids, np.int32)), lengths=pack(np.asarray(lengths, np.int32)),
        score_from=pack(np.asarray(score_from, np.int32)), **kw))


IDS = list(range(10, 20))   # two sequences: 4 + 6 tokens
CASES = {
    "lengths do not add up": (packed(IDS, [4, 5], [1, 1]),
                              "packed.token_ids must be DTYPE_INT32 of shape [9] "
                              "(packed.lengths add up to 9), got DTYPE_INT32 [10]"),
    "a sequence too short": (packed(IDS, [1, 9], [1, 1]),
                             "sequence 0: packed.lengths[0] = 1; a sequence to score needs at least 2"),
    "a negative length": (packed(IDS, [12, -2], [1, 1]), "sequence 1: packed.lengths[1] = -2"),
    "a sequence too long": (packed(np.ones(CONTEXT + 3), [2, CONTEXT + 1], [1, 1]),
                            f"sequence 1: {CONTEXT + 1} tokens exceed the teacher's context"),
    "no sequences": (packed([], [], []), "no sequences"),
    "score_from count": (packed(IDS, [4, 6], [1]), "packed.score_from must be DTYPE_INT32 "
                                                  "of shape [2] (one per sequence), got DTYPE_INT32 [1]"),
    "score_from past the end": (packed(IDS, [4, 6], [1, 6]),
                                "sequence 1: score_from=6 is out of range for 6 tokens"),
    "score_from zero": (packed(IDS, [4, 6], [0, 1]), "sequence 0: score_from=0 is out of range"),
    "float lengths": (pb.ScoreRequest(packed=pb.PackedScoreSequences(
        token_ids=pack(np.array(IDS, np.int32)), lengths=pack(np.array([4, 6], np.float32)),
        score_from=pack(np.array([1, 1], np.int32)))), "packed.lengths must be DTYPE_INT32 of shape [B]"),
    "2-D token ids": (pb.ScoreRequest(packed=pb.PackedScoreSequences(
        token_ids=pack(np.ones((2, 5), np.int32)), lengths=pack(np.array([4, 6], np.int32)),
        score_from=pack(np.array([1, 1], np.int32)))), "packed.token_ids must be DTYPE_INT32 of shape [10]"),
    "id outside the vocabulary": (packed(IDS[:7] + [VOCAB] + IDS[8:], [4, 6], [1, 1]),
                                  f"sequence 1: token id {VOCAB} at position 3 is outside the vocabulary"),
    "bytes do not match": (pb.ScoreRequest(packed=pb.PackedScoreSequences(
        token_ids=pb.Tensor(dtype=pb.DTYPE_INT32, shape=[10], data=b"\0" * 12),
        lengths=pack(np.array([4, 6], np.int32)), score_from=pack(np.array([1, 1], np.int32)))),
        "packed.token_ids: 12 bytes do not match shape [10]"),
    "candidate rows": (packed(IDS, [4, 6], [1, 1], candidate_ids=pack(np.zeros((7, 2), np.int32))),
                       "packed.candidate_ids must be DTYPE_INT32 of shape [8, C]"),
    "candidate outside the vocabulary": (
        packed(IDS, [4, 6], [1, 1], candidate_ids=pack(np.eye(8, 2, -4, np.int32) * VOCAB)),
        f"sequence 1 candidate_ids: token id {VOCAB} at position [1, 0]"),
    "both forms": (pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=pack(np.arange(3, dtype=np.int32)),
                                                                score_from=1)],
                                   packed=packed(IDS, [4, 6], [1, 1]).packed), "both `sequences` and `packed`"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_packed_requests_are_refused(stub, name):
    request, message = CASES[name]
    assert_refused(stub.Score, request, message)
    good = stub.Score(packed(IDS, [4, 6], [1, 2]), timeout=30)
    assert list(good.offsets.shape) == [3] and list(good.packed.topk_ids.shape) == [7, 20]

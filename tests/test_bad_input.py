"""Every kind of bad input gets a clear status and message; the server keeps serving."""

import numpy as np
import pytest

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from tests.conftest import assert_refused

VOCAB, CONTEXT = 512, 256
OK_SEQ = pack(np.arange(10, dtype=np.int32))


def seq(ids, score_from=1, **kw):
    return pb.ScoreSequence(token_ids=pack(np.asarray(ids, dtype=np.int32)), score_from=score_from, **kw)


CASES = {
    "id below zero": (pb.ScoreRequest(sequences=[seq([1, 2, -3])]),
                      "INVALID_ARGUMENT", "sequence 0: token id -3 at position 2 is outside the vocabulary"),
    "id above vocab": (pb.ScoreRequest(sequences=[seq([1, 2]), seq([4, 5, VOCAB])]),
                       "INVALID_ARGUMENT", f"sequence 1: token id {VOCAB} at position 2"),
    "empty sequence": (pb.ScoreRequest(sequences=[seq([], 0)]), "INVALID_ARGUMENT", "empty sequence"),
    "no sequences": (pb.ScoreRequest(), "INVALID_ARGUMENT", "no sequences"),
    "score_from zero": (pb.ScoreRequest(sequences=[seq([1, 2, 3], 0)]),
                        "INVALID_ARGUMENT", "score_from=0 is out of range for 3 tokens"),
    "score_from past end": (pb.ScoreRequest(sequences=[seq([1, 2, 3], 3)]),
                            "INVALID_ARGUMENT", "between 1 and 2"),
    "top_k zero": (pb.ScoreRequest(sequences=[seq([1, 2])], top_k=0), "INVALID_ARGUMENT", "top_k=0"),
    "top_k above vocab": (pb.ScoreRequest(sequences=[seq([1, 2])], top_k=VOCAB + 1),
                          "INVALID_ARGUMENT", f"between 1 and {VOCAB}"),
    "temperature zero": (pb.ScoreRequest(sequences=[seq([1, 2])], temperature=0.0),
                         "INVALID_ARGUMENT", "temperature=0.0 must be a finite number > 0"),
    "temperature nan": (pb.ScoreRequest(sequences=[seq([1, 2])], temperature=float("nan")),
                        "INVALID_ARGUMENT", "temperature=nan"),
    "temperature inf": (pb.ScoreRequest(sequences=[seq([1, 2])], temperature=float("inf")),
                        "INVALID_ARGUMENT", "temperature=inf"),
    "temperature tiny": (pb.ScoreRequest(sequences=[seq([1, 2])], temperature=1e-40),   # logits overflow
                         "INVALID_ARGUMENT", "at least 0.001"),
    "too long": (pb.ScoreRequest(sequences=[seq(np.ones(CONTEXT + 1))]),
                 "INVALID_ARGUMENT", f"{CONTEXT + 1} tokens exceed the teacher's context of {CONTEXT}"),
    "unknown dtype": (pb.ScoreRequest(sequences=[seq([1, 2])], logprob_dtype=7),
                      "INVALID_ARGUMENT", "logprob_dtype 7"),
    "int dtype for logprobs": (pb.ScoreRequest(sequences=[seq([1, 2])], logprob_dtype=pb.DTYPE_INT32),
                               "INVALID_ARGUMENT", "logprob_dtype"),
    "bytes do not match shape": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(
            token_ids=pb.Tensor(dtype=pb.DTYPE_INT32, shape=[5], data=b"\0" * 12), score_from=1)]),
        "INVALID_ARGUMENT", "12 bytes do not match shape [5]"),
    "float token ids": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=pack(np.ones(3, np.float32)), score_from=1)]),
        "INVALID_ARGUMENT", "token_ids must be DTYPE_INT32 of shape [T]"),
    "2-D token ids": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=pack(np.ones((2, 3), np.int32)), score_from=1)]),
        "INVALID_ARGUMENT", "token_ids must be DTYPE_INT32 of shape [T]"),
    "candidates wrong rows": (
        pb.ScoreRequest(sequences=[seq([1, 2, 3], 1, candidate_ids=pack(np.zeros((3, 2), np.int32)))]),
        "INVALID_ARGUMENT", "candidate_ids must be DTYPE_INT32 of shape [2, C]"),
    "candidate out of vocab": (
        pb.ScoreRequest(sequences=[seq([1, 2, 3], 1, candidate_ids=pack(np.full((2, 2), VOCAB, np.int32)))]),
        "INVALID_ARGUMENT", "candidate_ids: token id 512 at position [0, 0]"),
    "over the message limit": (
        pb.ScoreRequest(sequences=[seq(np.ones(5 * 1024 * 1024 // 4))]),
        "RESOURCE_EXHAUSTED", ""),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_then_good_request(stub, name):
    request, code, message = CASES[name]
    assert_refused(stub.Score, request, message, code)
    # the server keeps serving
    good = stub.Score(pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=OK_SEQ, score_from=1)]),
                      timeout=30)
    assert list(good.results[0].topk_ids.shape) == [9, 20]

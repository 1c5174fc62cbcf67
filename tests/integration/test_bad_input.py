"""Every kind of bad Score input (tests.helpers.bad_requests.SCORE_BAD) gets a clear status and
message; the server keeps serving."""

import pytest

from distill.v1 import teacher_pb2 as pb
from tests.helpers import assert_refused
from tests.helpers.bad_requests import OK_SEQ, SCORE_BAD


@pytest.mark.parametrize("name", list(SCORE_BAD))
def test_bad_input_then_good_request(stub, name):
    request, code, message = SCORE_BAD[name]
    assert_refused(stub.Score, request, message, code)
    # the server keeps serving
    good = stub.Score(pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=OK_SEQ, score_from=1)]),
                      timeout=30)
    assert list(good.results[0].topk_ids.shape) == [9, 20]

"""Score's packed form without a server: chunks that fit the batch budget, rows put back in order,
and the client's packing of requests and answers (on the real server: tests/integration/)."""

import numpy as np
import pytest
import torch

from distill.client.teacher_client import score_request
from distill.results import TeacherScores, scores_from_packed, scores_to_proto
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from teacher_server.scoring import ScoreItem, unsort_rows
from tests.helpers import ragged_sequences


def test_chunks_fit_the_budget_and_unsort_restores_the_order():
    seqs, starts = ragged_sequences(5, 40)
    item = ScoreItem.pack([torch.as_tensor(s) for s in seqs], starts, 3)
    assert item.chunks(item.num_sequences * item.padded_shape[1]) == ([item], None)
    chunks, row_order = item.chunks(100)
    assert sum(c.num_sequences for c in chunks) == 40 and len(chunks) > 2
    widths = [w for c in chunks for w in c.lengths.tolist()]
    assert widths == sorted(widths)
    assert all(c.num_sequences * c.padded_shape[1] <= 100 for c in chunks)
    # token ids tagged with their place in the request: a chunk's "score" of a row is the id at
    # its position, and unsorting must give back the request's rows in order
    tagged = ScoreItem(torch.arange(item.num_tokens), item.lengths, item.score_from, 3, 1.0, None)
    scored_ids = lambda c: torch.cat([ids[start:] for ids, start in c.sequences()]).float()
    chunks, row_order = tagged.chunks(100)
    got = torch.cat([scored_ids(c) for c in chunks])
    scores = unsort_rows(TeacherScores(got[:, None].int(), got[:, None], got, got, None), row_order)
    assert torch.equal(scores.token_logprobs, scored_ids(tagged))


def test_the_client_sends_packed_and_falls_back_for_ragged_candidates():
    seqs, starts = ragged_sequences(2, 3)
    cands = [np.zeros((len(s) - f, c), np.int32) for s, f, c in zip(seqs, starts, (1, 2, 2))]
    assert score_request(seqs, starts, 5, 1.0, None, "float32").HasField("packed")
    fallback = score_request(seqs, starts, 5, 1.0, cands, "float32")
    assert not fallback.HasField("packed") and len(fallback.sequences) == 3


def test_the_client_refuses_offsets_that_do_not_cut_the_rows():
    rows = torch.zeros(5, 2)
    scores = TeacherScores(rows.int(), rows, rows[:, 0], rows[:, 0], None)
    result, offsets = scores_to_proto(scores, pb.DTYPE_FLOAT32), pack(np.array([0, 2, 5], np.int32))
    assert [s.token_logprobs.shape[0] for s in scores_from_packed(result, offsets)] == [2, 3]
    for bad in ([0, 3, 2, 5], [0, 2, 6], [1, 5]):
        with pytest.raises(ValueError, match="do not cut"):
            scores_from_packed(result, pack(np.array(bad, np.int32)))

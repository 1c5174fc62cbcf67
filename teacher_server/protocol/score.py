"""Score: a ScoreRequest -> one ScoreItem for the whole request -> a ScoreResponse.

There is one parser, for the packed form; its checks are whole-array operations, so a request
costs its tokens, not a Python step per sequence. The per-sequence form (deprecated, goes before
1.0) is converted to the packed form at the edge, takes the same path, and is answered per
sequence. So is the text form (protocol/text.py: the teacher tokenizes), answered packed with each
row's token and character span.
"""

from __future__ import annotations

import numpy as np
import torch

from distill.results import TeacherScores, scores_to_proto
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from teacher_server.errors import InvalidRequest
from teacher_server.protocol.arrays import INT32, Dim, id_vector, outside_vocabulary, unpack_checked
from teacher_server.protocol.request import (Limits, Parsed, check_sequences, check_tokens, logprob_dtype,
                                             require, temperature, top_k)
from teacher_server.scoring import ScoreItem, unsort_rows


def parse_score_request(request: pb.ScoreRequest, limits: Limits) -> Parsed:
    """Validate a ScoreRequest (either form) into ScoreItems; raise InvalidRequest naming what
    is wrong. A packed request is answered packed, a per-sequence one per sequence."""
    forms = [name for name, used in (("sequences", bool(request.sequences)), ("packed", request.HasField("packed")),
                                     ("text", bool(request.text))) if used]
    if len(forms) > 1:
        raise InvalidRequest(f"the request has both `{forms[0]}` and `{forms[1]}`; send one form")
    if not forms:
        raise InvalidRequest("the request has no sequences")
    dtype = logprob_dtype(request.logprob_dtype)
    k, temp = top_k(request, limits), temperature(request, limits)
    packed, widths, text_rows = request.packed, None, None
    if request.sequences:
        packed, widths = _packed_from_sequences(request.sequences, limits)
    if request.text:
        require(limits.text is not None, limits, "the text form of Score")
        check_sequences(len(request.text), limits)
        packed, *text_rows = limits.text.packed(request.text, limits)
    item = _packed_score_item(packed, k, temp, limits)
    scored = item.rows.numpy()
    # one item for the whole request, cut into forward passes only when over the batch budget
    items, row_order = item.chunks(limits.max_batch_tokens)

    def respond(outputs: list[TeacherScores]) -> pb.ScoreResponse:
        scores = unsort_rows(TeacherScores.concat(outputs), row_order)
        response = pb.ScoreResponse()
        if widths is None:
            scores_to_proto(scores, dtype, into=response.packed)
            pack(np.concatenate([[0], np.cumsum(scored)]), "int32", into=response.offsets)
            if text_rows is not None:
                pack(text_rows[0], into=response.token_ids)
                pack(text_rows[1], into=response.char_spans)
            return response
        for result, width in zip(scores.split(scored.tolist()), widths):
            # each sequence its own candidates, if any
            result.candidate_logprobs = result.candidate_logprobs[:, :width] if width else None
            scores_to_proto(result, dtype, into=response.results.add())
        return response

    return Parsed(items, respond, item.num_sequences, item.num_tokens, item.num_scored)


def _packed_from_sequences(sequences, limits: Limits) -> tuple[pb.PackedScoreSequences, list[int]]:
    """The per-sequence form as the packed form. Checked here, message by message, is only what
    packing needs: each sequence's ids are a non-empty int32 vector, its score_from fits (int32,
    and the candidates' row count follows from it), its candidates are int32 [N, C]; the rest is
    the packed path's. Candidate blocks of different widths are padded to the widest (with id 0;
    a sequence without candidates gets a block of them); the second value is each sequence's own
    width (0: none), to cut the answer back."""
    check_sequences(len(sequences), limits)
    ids = [id_vector(seq.token_ids, f"sequence {i} token_ids") for i, seq in enumerate(sequences)]
    lengths = np.array([seq.size for seq in ids], np.int64)
    starts = np.array([seq.score_from for seq in sequences], np.int64)
    _check_score_from(starts, lengths)
    rows = lengths - starts
    blocks = [None] * len(sequences)
    for i, seq in enumerate(sequences):
        if seq.HasField("candidate_ids"):
            require(limits.features.score_candidates, limits, "candidate_ids")
            blocks[i] = unpack_checked(seq.candidate_ids, f"sequence {i} candidate_ids", INT32,
                                       [rows[i], Dim("C", 1)], why="one row per scored position")
    packed = pb.PackedScoreSequences()
    pack(np.concatenate(ids), into=packed.token_ids)
    pack(lengths, "int32", into=packed.lengths)
    pack(starts, "int32", into=packed.score_from)
    widths = [0 if block is None else block.shape[1] for block in blocks]
    if max(widths):
        cands_RC = np.zeros((int(rows.sum()), max(widths)), np.int32)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        for i, block in enumerate(blocks):
            if block is not None:
                cands_RC[offsets[i]:offsets[i + 1], :block.shape[1]] = block
        pack(cands_RC, into=packed.candidate_ids)
    return packed, widths


def _check_score_from(score_from: np.ndarray, lengths: np.ndarray) -> None:
    """1 <= score_from[i] <= lengths[i] - 1 for every sequence i."""
    bad = np.flatnonzero((score_from < 1) | (score_from > lengths - 1))
    if bad.size:
        i = int(bad[0])
        start, T = int(score_from[i]), int(lengths[i])
        raise InvalidRequest(f"sequence {i}: score_from={start} is out of range for {T} "
                             f"tokens; it must be between 1 and {T - 1} (position 0 has no context)")


def _packed_score_item(packed: pb.PackedScoreSequences, top_k: int, temperature: float,
                       limits: Limits) -> ScoreItem:
    """The packed form's checks, each one array operation over the whole request; the request
    as one item."""
    lengths = unpack_checked(packed.lengths, "packed.lengths", INT32, [Dim("B")]).astype(np.int64)
    if not lengths.size:
        raise InvalidRequest("the request has no sequences (packed.lengths is empty)")
    check_sequences(lengths.size, limits)
    starts = unpack_checked(packed.score_from, "packed.score_from", INT32, [lengths.size],
                            why="one per sequence").astype(np.int64)
    short = np.flatnonzero(lengths < 2)
    if short.size:
        i = int(short[0])
        raise InvalidRequest(f"sequence {i}: packed.lengths[{i}] = {lengths[i]}; a sequence to score "
                             f"needs at least 2 tokens (position 0 has no context)")
    long = np.flatnonzero(lengths > limits.max_context)
    if long.size:
        i = int(long[0])
        raise InvalidRequest(f"sequence {i}: {lengths[i]} tokens exceed the teacher's context of "
                             f"{limits.max_context} tokens; truncate or split it")
    total = int(lengths.sum())
    check_tokens(total, limits)
    ids = unpack_checked(packed.token_ids, "packed.token_ids", INT32, [total],
                         why=f"packed.lengths add up to {total}")
    _check_vocab(ids, lengths, "", limits)
    _check_score_from(starts, lengths)
    cands = None
    if packed.HasField("candidate_ids"):
        require(limits.features.score_candidates, limits, "candidate_ids")
        rows = lengths - starts
        cands = unpack_checked(packed.candidate_ids, "packed.candidate_ids", INT32,
                               [int(rows.sum()), Dim("C", 1)],
                               why="one row per scored position of every sequence")
        _check_vocab(cands, rows, " candidate_ids", limits)
        cands = torch.from_numpy(cands.astype(np.int64))
    return ScoreItem(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths),
                     torch.from_numpy(starts), top_k, temperature, cands, limits.tenant)


def _check_vocab(array: np.ndarray, rows: np.ndarray, field: str, limits: Limits) -> None:
    """Every id of `array` (sequence i's rows[i] rows one after another) is in the vocabulary;
    the message names the first one outside by its sequence and its position there."""
    if not array.size or (array.min() >= 0 and array.max() < limits.vocab_size):
        return   # the common case, checked without building an index
    first = tuple(np.argwhere((array < 0) | (array >= limits.vocab_size))[0].tolist())
    offsets = np.concatenate([[0], np.cumsum(rows)])
    i = int(np.searchsorted(offsets, first[0], side="right")) - 1
    at = [first[0] - int(offsets[i]), *first[1:]]
    raise outside_vocabulary(f"sequence {i}{field}", array[first].item(),
                             at[0] if len(at) == 1 else at, limits)

"""Verify: a VerifyRequest -> one VerifyItem per sequence -> a VerifyResponse."""

from __future__ import annotations

import secrets

import numpy as np
import torch

from distill.results import VERIFY_MODE_NAMES, VerifyOutcome, verify_to_proto
from distill.v1 import teacher_pb2 as pb
from teacher_server.errors import InvalidRequest, NotSupported
from teacher_server.protocol.arrays import FLOAT32, INT32, Dim, check_vocab, token_ids, unpack_checked
from teacher_server.protocol.request import (Limits, Parsed, check_sequences, check_tokens, logprob_dtype,
                                             require, temperature, top_k)
from teacher_server.sessions import MAX_KEY_BYTES
from teacher_server.verify import VerifyItem

PROB_SUM_TOLERANCE = 1e-3


def parse_verify_request(request: pb.VerifyRequest, limits: Limits) -> Parsed:
    """Validate a VerifyRequest into one VerifyItem per sequence; raise InvalidRequest."""
    if not limits.features.verify:
        raise NotSupported(f"the {limits.backend} backend does not serve Verify")
    if not request.sequences:
        raise InvalidRequest("the request has no sequences")
    check_sequences(len(request.sequences), limits)
    mode = VERIFY_MODE_NAMES.get(request.mode)
    if mode is None:
        what = "is not set" if request.mode == pb.VERIFY_MODE_UNSPECIFIED else f"{request.mode} is unknown"
        raise InvalidRequest(f"mode {what}: choose VERIFY_MODE_SPECULATIVE, VERIFY_MODE_TOPK or "
                             f"VERIFY_MODE_GREEDY")
    if mode == "speculative":
        require(limits.features.verify_speculative, limits, "VERIFY_MODE_SPECULATIVE (VERIFY_MODE_TOPK "
                "and VERIFY_MODE_GREEDY are exact here)")
    dtype = logprob_dtype(request.logprob_dtype)
    k, temp = top_k(request, limits), temperature(request, limits)
    max_k = limits.max_accept_top_k or limits.vocab_size
    if mode == "topk" and not 1 <= request.accept_top_k <= max_k:
        raise InvalidRequest(f"accept_top_k={request.accept_top_k} is out of range for "
                             f"VERIFY_MODE_TOPK: it must be between 1 and {max_k} " +
                             ("(the vocabulary size)" if max_k == limits.vocab_size
                              else f"(the {limits.backend} backend's max_top_k)"))
    base_seed = request.seed if request.HasField("seed") else secrets.randbits(64)
    items = []
    for i, seq in enumerate(request.sequences):
        where = f"sequence {i}"
        prefix = token_ids(seq.prefix_ids, f"{where} prefix_ids", limits)
        if not seq.HasField("draft_ids") or 0 in seq.draft_ids.shape:
            raise InvalidRequest(f"{where}: the draft is empty (γ = 0); send at least one draft "
                                 f"token (Score scores a prefix alone)")
        draft = token_ids(seq.draft_ids, f"{where} draft_ids", limits)
        P, G = prefix.numel(), draft.numel()
        if G > limits.max_draft_tokens:
            raise InvalidRequest(f"{where}: {G} draft tokens exceed the teacher's max_draft_tokens="
                                 f"{limits.max_draft_tokens}; send shorter drafts")
        if P + G + 1 > limits.max_context:
            raise InvalidRequest(
                f"{where}: {P} prefix tokens + {G} draft tokens + 1 = {P + G + 1} exceed the "
                f"teacher's context of {limits.max_context} tokens (the +1 is the token after the "
                f"draft); shorten the prefix or the draft")
        q = _draft_probs(seq, G, where, limits) if mode == "speculative" else None
        if len(seq.session_key.encode()) > MAX_KEY_BYTES:
            raise InvalidRequest(f"{where}: session_key is {len(seq.session_key.encode())} bytes; keys are at "
                                 f"most {MAX_KEY_BYTES}")
        # A stream per sequence: its answer depends on (seed, index), not on its batch-mates.
        seed = int(np.random.SeedSequence([base_seed, i]).generate_state(1, np.uint64)[0])
        items.append(VerifyItem(prefix, draft, q, mode, temp, request.accept_top_k, k, seed, limits.tenant,
                                seq.session_key if limits.features.verify_sessions else "", seq.end_session))
    tokens = sum(item.num_tokens for item in items)
    check_tokens(tokens, limits)

    def respond(outputs: list[VerifyOutcome]) -> pb.VerifyResponse:
        response = pb.VerifyResponse()
        for outcome in outputs:
            verify_to_proto(outcome, dtype, into=response.results.add())
        return response

    return Parsed(items, respond, len(items), tokens)


def _draft_probs(seq: pb.VerifySequence, G: int, where: str, limits: Limits) -> torch.Tensor:
    """The student's q at the G draft positions as full float32 [G, V] rows, from either wire
    form. Full rows may stop at the real vocabulary R (the tokenizer's size, when the embedding is
    padded past it); the padded ids then get 0. In the top-k form the mass 1 - sum(probs) of each
    row is spread evenly over the R - k real ids not listed (an approximation of q: the student
    sent no more)."""
    V = limits.vocab_size
    R = limits.real_vocab or V
    if not seq.HasField("draft_probs"):
        raise InvalidRequest(f"{where}: draft_probs is required in VERIFY_MODE_SPECULATIVE (the "
                             f"student's probabilities at each draft position)")
    ids = None
    if seq.HasField("draft_topk_ids"):
        ids = unpack_checked(seq.draft_topk_ids, f"{where} draft_topk_ids", INT32, [G, Dim("k", 1, V)])
        ids = torch.from_numpy(ids.astype("int64"))
        check_vocab(ids, f"{where} draft_topk_ids", limits)
        ids_sorted = ids.sort(-1).values
        repeats = (ids_sorted[:, 1:] == ids_sorted[:, :-1]).nonzero()
        if repeats.numel():
            row, col = repeats[0].tolist()
            raise InvalidRequest(f"{where}: draft_topk_ids row {row} repeats token id "
                                 f"{ids_sorted[row, col].item()}; each row lists distinct ids")
        probs = unpack_checked(seq.draft_probs, f"{where} draft_probs", FLOAT32, [G, ids.shape[1]],
                               why="matching draft_topk_ids")
    else:
        probs = unpack_checked(seq.draft_probs, f"{where} draft_probs", FLOAT32, [G, V], [G, R],
                               why="full rows" + (", or rows over the real vocabulary" if R < V else ""))
    bad = np.argwhere(~np.isfinite(probs) | (probs < 0))
    if bad.size:
        row, col = bad[0].tolist()
        raise InvalidRequest(f"{where}: draft_probs[{row}, {col}] = {probs[row, col]:.6g} is not a "
                             f"probability (negative or not finite)")
    sums = probs.sum(-1, dtype=np.float64)
    full_rows = ids is None or ids.shape[1] >= R     # then nothing is left to spread
    off = np.nonzero((sums > 1 + PROB_SUM_TOLERANCE)
                     | (full_rows & (sums < 1 - PROB_SUM_TOLERANCE)))[0]
    if off.size:
        row = int(off[0])
        rule = "sum to 1" if full_rows else "sum to at most 1"
        raise InvalidRequest(f"{where}: draft_probs row {row} sums to {sums[row]:.6g}; rows must "
                             f"{rule} (within {PROB_SUM_TOLERANCE:g})")
    q = torch.from_numpy(probs.astype(np.float32))
    if ids is None:
        return torch.nn.functional.pad(q, (0, V - q.shape[1]))
    rest_G1 = (1 - q.sum(-1, keepdim=True)).clamp(min=0) / max(R - ids.shape[1], 1)
    spread_GV = rest_G1.expand(G, V).clone()
    spread_GV[:, R:] = 0
    return spread_GV.scatter_(-1, ids, q)

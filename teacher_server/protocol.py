"""distill.v1 messages <-> validated work items and back. Every check of user input lives here:
the per-request caps (the server's and the calling tenant's), what the backend serves, and each
field. `parse_*(request, limits)` returns a `Parsed`: the items for the batcher and how to answer
with their outputs.

Messages name the sequence (and position) at fault, so a person can fix the request. The packed
form of Score is checked with whole-array operations: a request costs its tokens, not a Python
loop per sequence.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from distill.results import (VERIFY_MODE_NAMES, TeacherScores, VerifyOutcome, samples_to_proto,
                             scores_to_proto, verify_to_proto)
from distill.tensors import PackError, pack, unpack
from distill.v1 import teacher_pb2 as pb
from teacher_server.backends import Features, ModelInfo
from teacher_server.errors import InvalidRequest, NotSupported
from teacher_server.generation import GenerateItem
from teacher_server.scoring import ScoreItem, unsort_rows
from teacher_server.verify import VerifyItem

DEFAULT_TOP_K = 20
MAX_SAMPLES = 64   # per prompt: n samples cost n times the prompt's tokens in one batch
_LOGPROB_DTYPES = {pb.DTYPE_UNSPECIFIED: pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT32: pb.DTYPE_FLOAT32,
                   pb.DTYPE_FLOAT16: pb.DTYPE_FLOAT16}
PROB_SUM_TOLERANCE = 1e-3
# Logits / temperature must stay finite in float32: a temperature of 1e-40 turns every logit into
# ±inf, and then Score returns NaN and sampling fails.
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_context: int
    max_top_k: int
    max_draft_tokens: int = 16
    max_request_sequences: int = 4096
    max_request_tokens: int = 1 << 20
    max_accept_top_k: int = 0     # K of VERIFY_MODE_TOPK (0: vocab_size)
    backend: str = "transformers"
    features: Features = Features()   # requests that need a missing one get UNIMPLEMENTED
    # the calling tenant's own caps on one request's tokens (0: none); see for_tenant
    tenant: str = ""
    tenant_max_queued_tokens: int = 0
    tenant_tokens_per_minute: int = 0
    real_vocab: int = 0           # the tokenizer's size when the embedding is padded past it (0: none)
    max_batch_tokens: int = 0     # a packed Score request is cut into forward passes of this (0: never)

    def for_tenant(self, tenant) -> "Limits":
        """These limits plus `tenant`'s: a request larger than its queue or its whole per-minute
        quota could never be served, so it is refused as invalid, not as over a limit."""
        return dataclasses.replace(self, tenant=tenant.name,
                                   tenant_max_queued_tokens=tenant.max_queued_tokens,
                                   tenant_tokens_per_minute=tenant.spec.tokens_per_minute)


def limits_for(info: ModelInfo, max_top_k: int = 0, max_context: int = 0,
               max_draft_tokens: int = 16, max_request_sequences: int = 4096,
               max_request_tokens: int = 1 << 20, max_batch_tokens: int = 0) -> Limits:
    backend_top_k = min(info.max_top_k or info.vocab_size, info.vocab_size)
    top_k = min(max_top_k or backend_top_k, backend_top_k)
    context = min(max_context or info.max_context, info.max_context)
    return Limits(info.vocab_size, context, top_k, max_draft_tokens, max_request_sequences,
                  max_request_tokens, backend_top_k, info.backend, info.features,
                  real_vocab=info.real_vocab or 0, max_batch_tokens=max_batch_tokens)


@dataclass
class Parsed:
    """A validated request: work items for the batcher, and how to answer with their outputs."""

    items: list
    respond: Callable[[list], object]   # the items' outputs (same order) -> the response message
    num_sequences: int                  # sequences asked for (Generate: prompts x samples)
    num_tokens: int                     # tokens put through the model (the items' num_tokens)
    num_scored: int = 0                 # Score: positions scored


def _check_sequences(num_sequences: int, limits: Limits) -> None:
    """The per-request cap on sequences, checked before anything is unpacked."""
    if num_sequences > limits.max_request_sequences:
        raise InvalidRequest(f"the request has {num_sequences} sequences, over the limit of "
                             f"{limits.max_request_sequences} per request; split it")


def _check_tokens(tokens: int, limits: Limits) -> None:
    """The per-request caps on tokens put through the model: the server's, then the tenant's."""
    if tokens > limits.max_request_tokens:
        raise InvalidRequest(f"the request puts {tokens} tokens through the model, over the limit "
                             f"of {limits.max_request_tokens} per request; split it")
    if limits.tenant_max_queued_tokens and tokens > limits.tenant_max_queued_tokens:
        raise InvalidRequest(f"this request needs {tokens} tokens, more than tenant "
                             f"{limits.tenant!r}'s max_queued_tokens of "
                             f"{limits.tenant_max_queued_tokens}; split it")
    if limits.tenant_tokens_per_minute and tokens > limits.tenant_tokens_per_minute:
        raise InvalidRequest(f"this request needs {tokens} tokens, more than tenant "
                             f"{limits.tenant!r}'s whole tokens_per_minute quota of "
                             f"{limits.tenant_tokens_per_minute}; split it into smaller requests")


def _require(supported: bool, limits: Limits, what: str) -> None:
    if not supported:
        raise NotSupported(f"the {limits.backend} backend does not serve {what} (Info.features "
                           f"says so); use a teacher on the transformers backend for it")


def _token_ids(tensor: pb.Tensor, where: str, limits: Limits) -> torch.Tensor:
    """Unpack an int32 [T] id vector and check every id is in the vocabulary."""
    if not tensor.ByteSize():
        raise InvalidRequest(f"{where}: missing token ids")
    array = _unpack(tensor, where)
    if tensor.dtype != pb.DTYPE_INT32 or array.ndim != 1:
        raise InvalidRequest(f"{where}: token ids must be a 1-D DTYPE_INT32 tensor, got "
                             f"{pb.DType.Name(tensor.dtype)} of shape {list(array.shape)}")
    if array.size == 0:
        raise InvalidRequest(f"{where}: empty sequence")
    if array.size > limits.max_context:
        raise InvalidRequest(f"{where}: {array.size} tokens exceed the teacher's context of "
                             f"{limits.max_context} tokens; truncate or split it")
    ids = torch.from_numpy(array.astype("int64"))
    _check_vocab(ids, where, limits)
    return ids


def _unpack(tensor: pb.Tensor, where: str) -> np.ndarray:
    try:
        return unpack(tensor, name=where)
    except PackError as exc:
        raise InvalidRequest(str(exc)) from None


def _check_vocab(ids: torch.Tensor, where: str, limits: Limits) -> None:
    if not ids.numel() or (ids.min() >= 0 and ids.max() < limits.vocab_size):
        return   # the common case, checked without building an index
    bad = ((ids < 0) | (ids >= limits.vocab_size)).nonzero()
    if bad.numel():
        pos = tuple(bad[0].tolist())
        at = pos[0] if len(pos) == 1 else list(pos)
        raise InvalidRequest(f"{where}: token id {ids[pos].item()} at position {at} is outside "
                             f"the vocabulary [0, {limits.vocab_size})")


def logprob_dtype(value: int) -> int:
    if value not in _LOGPROB_DTYPES:
        raise InvalidRequest(f"logprob_dtype {value} is not DTYPE_FLOAT32 or DTYPE_FLOAT16")
    return _LOGPROB_DTYPES[value]


def _top_k(request, limits: Limits) -> int:
    top_k = request.top_k if request.HasField("top_k") else DEFAULT_TOP_K
    if not 1 <= top_k <= limits.max_top_k:
        why = (" (the vocabulary size)" if limits.max_top_k == limits.vocab_size
               else " (this server's maximum, set by --max-top-k at start)")
        raise InvalidRequest(f"top_k={top_k} is out of range: it must be between 1 and "
                             f"{limits.max_top_k}{why}")
    return top_k


def _temperature(request, limits: Limits) -> float:
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise InvalidRequest(f"temperature={temperature} must be a finite number > 0 (at least "
                             f"{MIN_TEMPERATURE:g}: dividing the logits by less can overflow them)")
    if temperature != 1.0:
        _require(limits.features.score_temperature, limits, f"temperature={temperature:g} (only 1)")
    return float(temperature)


def parse_score_request(request: pb.ScoreRequest, limits: Limits) -> Parsed:
    """Validate a ScoreRequest (either form) into ScoreItems; raise InvalidRequest naming what
    is wrong. A packed request is answered packed."""
    packed = request.HasField("packed")
    if packed and request.sequences:
        raise InvalidRequest("the request has both `sequences` and `packed`; send one form")
    if not packed and not request.sequences:
        raise InvalidRequest("the request has no sequences")
    dtype = logprob_dtype(request.logprob_dtype)
    top_k, temperature = _top_k(request, limits), _temperature(request, limits)
    if packed:
        item, widths = _packed_score_item(request.packed, top_k, temperature, limits), None
    else:
        item, widths = _per_sequence_score_item(request.sequences, top_k, temperature, limits)
    scored = item.rows.numpy()
    # one item for the whole request, cut into forward passes only when over the batch budget
    items, row_order = item.chunks(limits.max_batch_tokens)

    def respond(outputs: list[TeacherScores]) -> pb.ScoreResponse:
        scores = unsort_rows(TeacherScores.concat(outputs), row_order)
        response = pb.ScoreResponse()
        if widths is None:
            scores_to_proto(scores, dtype, into=response.packed)
            pack(np.concatenate([[0], np.cumsum(scored)]), "int32", into=response.offsets)
            return response
        for result, width in zip(scores.split(scored.tolist()), widths):
            # each sequence its own candidates, if any
            result.candidate_logprobs = result.candidate_logprobs[:, :width] if width else None
            scores_to_proto(result, dtype, into=response.results.add())
        return response

    return Parsed(items, respond, item.num_sequences, item.num_tokens, item.num_scored)


def _per_sequence_score_item(sequences, top_k: int, temperature: float,
                             limits: Limits) -> tuple[ScoreItem, list[int]]:
    """The per-sequence form, checked message by message, packed into one item like the packed
    form. Candidate blocks of different widths are padded to the widest (with id 0; a sequence
    without candidates gets a block of them); the second value is each sequence's own width (0:
    none), for cutting the answer back."""
    _check_sequences(len(sequences), limits)
    ids, starts, cands = [], [], []
    for i, seq in enumerate(sequences):
        where = f"sequence {i}"
        ids.append(_token_ids(seq.token_ids, where, limits))
        starts.append(int(seq.score_from))
        _check_score_from(np.array([seq.score_from]), np.array([ids[-1].numel()]), i)
        cands.append(None)
        if seq.HasField("candidate_ids"):
            _require(limits.features.score_candidates, limits, "candidate_ids")
            array = _unpack(seq.candidate_ids, f"{where} candidate_ids")
            n = ids[-1].numel() - seq.score_from
            if seq.candidate_ids.dtype != pb.DTYPE_INT32 or array.ndim != 2 \
                    or array.shape[0] != n or array.shape[1] < 1:
                raise InvalidRequest(
                    f"{where}: candidate_ids must be DTYPE_INT32 of shape [{n}, C] with C >= 1 "
                    f"(one row per scored position), got {pb.DType.Name(seq.candidate_ids.dtype)} "
                    f"{list(array.shape)}")
            cands[-1] = torch.from_numpy(array.astype("int64"))
            _check_vocab(cands[-1], f"{where} candidate_ids", limits)
    _check_tokens(sum(seq.numel() for seq in ids), limits)
    widths = [0 if c is None else c.shape[1] for c in cands]
    widest = max(widths)
    blocks = None if not widest else [
        torch.zeros(seq.numel() - start, widest, dtype=torch.int64) if c is None
        else torch.nn.functional.pad(c, (0, widest - c.shape[1]))
        for seq, start, c in zip(ids, starts, cands)]
    return ScoreItem.pack(ids, starts, top_k, temperature, blocks), widths


def _check_score_from(score_from: np.ndarray, lengths: np.ndarray, first: int = 0) -> None:
    """1 <= score_from[i] <= lengths[i] - 1 for every i (sequence `first` + i)."""
    bad = np.flatnonzero((score_from < 1) | (score_from > lengths - 1))
    if bad.size:
        i = int(bad[0])
        start, T = int(score_from[i]), int(lengths[i])
        raise InvalidRequest(f"sequence {first + i}: score_from={start} is out of range for {T} "
                             f"tokens; it must be between 1 and {T - 1} (position 0 has no context)")


def _index_array(tensor: pb.Tensor, where: str, size: int | None = None) -> np.ndarray:
    """A 1-D DTYPE_INT32 array of lengths or positions, as int64 (sums cannot overflow)."""
    array = _unpack(tensor, where)
    if tensor.dtype != pb.DTYPE_INT32 or array.ndim != 1 or (size is not None and array.size != size):
        want = "[B]" if size is None else f"[{size}] (one per sequence)"
        raise InvalidRequest(f"{where} must be a DTYPE_INT32 tensor of shape {want}, got "
                             f"{pb.DType.Name(tensor.dtype)} {list(array.shape)}")
    return array.astype(np.int64)


def _packed_score_item(packed: pb.PackedScoreSequences, top_k: int, temperature: float,
                       limits: Limits) -> ScoreItem:
    """The packed form's checks, each one array operation over the whole request; the request
    as one item."""
    lengths = _index_array(packed.lengths, "packed.lengths")
    if not lengths.size:
        raise InvalidRequest("the request has no sequences (packed.lengths is empty)")
    _check_sequences(lengths.size, limits)
    starts = _index_array(packed.score_from, "packed.score_from", lengths.size)
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
    _check_tokens(total, limits)
    ids = _unpack(packed.token_ids, "packed.token_ids")
    if packed.token_ids.dtype != pb.DTYPE_INT32 or ids.ndim != 1 or ids.size != total:
        raise InvalidRequest(f"packed.token_ids must be a DTYPE_INT32 tensor of shape [{total}] "
                             f"(packed.lengths add up to {total}), got "
                             f"{pb.DType.Name(packed.token_ids.dtype)} {list(ids.shape)}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    bad = np.flatnonzero((ids < 0) | (ids >= limits.vocab_size))
    if bad.size:
        pos = int(bad[0])
        i = int(np.searchsorted(offsets, pos, side="right")) - 1
        raise InvalidRequest(f"sequence {i}: token id {ids[pos]} at position {pos - offsets[i]} is "
                             f"outside the vocabulary [0, {limits.vocab_size})")
    _check_score_from(starts, lengths)
    scored = lengths - starts
    rows = int(scored.sum())
    item = lambda cands: ScoreItem(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths),
                                   torch.from_numpy(starts), top_k, temperature, cands)
    if not packed.HasField("candidate_ids"):
        return item(None)
    _require(limits.features.score_candidates, limits, "candidate_ids")
    array = _unpack(packed.candidate_ids, "packed.candidate_ids")
    if packed.candidate_ids.dtype != pb.DTYPE_INT32 or array.ndim != 2 or array.shape[0] != rows \
            or array.shape[1] < 1:
        raise InvalidRequest(
            f"packed.candidate_ids must be DTYPE_INT32 of shape [{rows}, C] with C >= 1 (one row "
            f"per scored position of every sequence), got "
            f"{pb.DType.Name(packed.candidate_ids.dtype)} {list(array.shape)}")
    bad = np.argwhere((array < 0) | (array >= limits.vocab_size))
    if bad.size:
        row, col = bad[0].tolist()
        row_offsets = np.concatenate([[0], np.cumsum(scored)])
        i = int(np.searchsorted(row_offsets, row, side="right")) - 1
        raise InvalidRequest(f"sequence {i} candidate_ids: token id {array[row, col]} at position "
                             f"{[row - int(row_offsets[i]), col]} is outside the vocabulary "
                             f"[0, {limits.vocab_size})")
    return item(torch.from_numpy(array.astype(np.int64)))


def parse_verify_request(request: pb.VerifyRequest, limits: Limits) -> Parsed:
    """Validate a VerifyRequest into one VerifyItem per sequence; raise InvalidRequest."""
    if not limits.features.verify:
        raise NotSupported(f"the {limits.backend} backend does not serve Verify")
    if not request.sequences:
        raise InvalidRequest("the request has no sequences")
    _check_sequences(len(request.sequences), limits)
    mode = VERIFY_MODE_NAMES.get(request.mode)
    if mode is None:
        what = "is not set" if request.mode == pb.VERIFY_MODE_UNSPECIFIED else f"{request.mode} is unknown"
        raise InvalidRequest(f"mode {what}: choose VERIFY_MODE_SPECULATIVE, VERIFY_MODE_TOPK or "
                             f"VERIFY_MODE_GREEDY")
    if mode == "speculative":
        _require(limits.features.verify_speculative, limits, "VERIFY_MODE_SPECULATIVE (VERIFY_MODE_TOPK "
                 "and VERIFY_MODE_GREEDY are exact here)")
    dtype = logprob_dtype(request.logprob_dtype)
    top_k, temperature = _top_k(request, limits), _temperature(request, limits)
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
        prefix = _token_ids(seq.prefix_ids, f"{where} prefix_ids", limits)
        if not seq.HasField("draft_ids") or 0 in seq.draft_ids.shape:
            raise InvalidRequest(f"{where}: the draft is empty (γ = 0); send at least one draft "
                                 f"token (Score scores a prefix alone)")
        draft = _token_ids(seq.draft_ids, f"{where} draft_ids", limits)
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
        # A stream per sequence: its answer depends on (seed, index), not on its batch-mates.
        seed = int(np.random.SeedSequence([base_seed, i]).generate_state(1, np.uint64)[0])
        items.append(VerifyItem(prefix, draft, q, mode, temperature, request.accept_top_k, top_k, seed))
    tokens = sum(item.num_tokens for item in items)
    _check_tokens(tokens, limits)
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
    probs = _unpack(seq.draft_probs, f"{where} draft_probs")
    ids = None
    if seq.HasField("draft_topk_ids"):
        array = _unpack(seq.draft_topk_ids, f"{where} draft_topk_ids")
        if seq.draft_topk_ids.dtype != pb.DTYPE_INT32 or array.ndim != 2 or array.shape[0] != G \
                or not 1 <= array.shape[1] <= V:
            raise InvalidRequest(
                f"{where}: draft_topk_ids must be DTYPE_INT32 of shape [{G}, k] with 1 <= k <= {V}, "
                f"got {pb.DType.Name(seq.draft_topk_ids.dtype)} {list(array.shape)}")
        ids = torch.from_numpy(array.astype("int64"))
        _check_vocab(ids, f"{where} draft_topk_ids", limits)
        ids_sorted = ids.sort(-1).values
        repeats = (ids_sorted[:, 1:] == ids_sorted[:, :-1]).nonzero()
        if repeats.numel():
            row, col = repeats[0].tolist()
            raise InvalidRequest(f"{where}: draft_topk_ids row {row} repeats token id "
                                 f"{ids_sorted[row, col].item()}; each row lists distinct ids")
    shapes = [[G, V], [G, R]] if ids is None else [[G, ids.shape[1]]]
    if seq.draft_probs.dtype != pb.DTYPE_FLOAT32 or list(probs.shape) not in shapes:
        shape = shapes[0]
        form = ("[G, V] (full rows)" + (f", or [{G}, {R}] (rows over the real vocabulary)"
                                        if R < V else "")
                if ids is None else "[G, k] (matching draft_topk_ids)")
        raise InvalidRequest(f"{where}: draft_probs must be DTYPE_FLOAT32 of shape {shape} {form}, "
                             f"got {pb.DType.Name(seq.draft_probs.dtype)} {list(probs.shape)}")
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


def parse_generate_request(request: pb.GenerateRequest, limits: Limits) -> Parsed:
    """Validate a GenerateRequest into one GenerateItem; raise InvalidRequest."""
    if not limits.features.generate:
        raise NotSupported(f"the {limits.backend} backend does not serve Generate")
    if not request.prompt_ids:
        raise InvalidRequest("the request has no prompts")
    _check_sequences(len(request.prompt_ids) * max(request.num_samples, 1), limits)
    dtype = logprob_dtype(request.logprob_dtype)
    num_samples = request.num_samples or 1
    if num_samples > MAX_SAMPLES:
        raise InvalidRequest(f"num_samples={num_samples} exceeds the limit of {MAX_SAMPLES} per "
                             f"prompt; send the prompt several times instead")
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and (temperature == 0 or temperature >= MIN_TEMPERATURE)):
        raise InvalidRequest(f"temperature={temperature} must be a finite number >= 0 (0 is greedy; "
                             f"else at least {MIN_TEMPERATURE:g}: dividing the logits by less can "
                             f"overflow them)")
    if temperature not in (0.0, 1.0):
        _require(limits.features.generate_temperature, limits, f"temperature={temperature:g} (only 0 or 1)")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not 0 < top_p <= 1:       # also refuses nan
        raise InvalidRequest(f"top_p={top_p} is out of range: it must be in (0, 1]")
    max_new = request.max_new_tokens
    if max_new < 1:
        raise InvalidRequest(f"max_new_tokens={max_new} must be >= 1")
    stop_ids = list(request.stop_token_ids)
    _check_vocab(torch.tensor(stop_ids, dtype=torch.long), "stop_token_ids", limits)
    seed = request.seed if request.HasField("seed") else None
    prompts = []
    for i, tensor in enumerate(request.prompt_ids):
        where = f"prompt {i}"
        ids = _token_ids(tensor, where, limits)
        if ids.numel() + max_new > limits.max_context:
            raise InvalidRequest(
                f"{where}: {ids.numel()} prompt tokens + max_new_tokens={max_new} = "
                f"{ids.numel() + max_new} exceed the teacher's context of {limits.max_context} "
                f"tokens; shorten the prompt or lower max_new_tokens")
        prompts.append(ids)
    item = GenerateItem(prompts, num_samples, float(temperature), float(top_p), max_new, stop_ids, seed)
    _check_tokens(item.num_tokens, limits)
    return Parsed([item], lambda outputs: samples_to_proto(outputs[0], dtype),
                  len(prompts) * num_samples, item.num_tokens)


def info_response(info: ModelInfo, limits: Limits, *, max_batch_tokens: int,
                  max_message_bytes: int, server_version: str) -> pb.InfoResponse:
    return pb.InfoResponse(
        model_id=info.model_id, backend=info.backend, vocab_size=info.vocab_size,
        tokenizer_size=info.tokenizer_size, tokenizer_fingerprint=info.tokenizer_fingerprint,
        special_tokens=pb.SpecialTokens(bos=info.bos, eos=info.eos, pad=info.pad, unk=info.unk,
                                        eos_ids=info.eos_ids),
        max_context=limits.max_context, max_top_k=limits.max_top_k, max_draft_tokens=limits.max_draft_tokens,
        max_batch_tokens=max_batch_tokens, max_message_bytes=max_message_bytes,
        features=pb.Features(**dataclasses.asdict(info.features)),
        model_dtype=info.model_dtype, server_version=server_version,
    )

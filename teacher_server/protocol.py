"""distill.v1 messages <-> validated work items and back. Every check of user input lives here.

Messages name the sequence (and position) at fault, so a person can fix the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distill.tensors import PackError, pack, unpack
from distill.v1 import teacher_pb2 as pb
from teacher_server.backends import ModelInfo
from teacher_server.errors import InvalidRequest
from teacher_server.generation import GeneratedSample, GenerateItem
from teacher_server.scoring import ScoreItem, ScoreOutput

DEFAULT_TOP_K = 20
MAX_SAMPLES = 64   # per prompt: n samples cost n times the prompt's tokens in one batch
_FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
_LOGPROB_DTYPES = {pb.DTYPE_UNSPECIFIED: pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT32: pb.DTYPE_FLOAT32,
                   pb.DTYPE_FLOAT16: pb.DTYPE_FLOAT16}


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_context: int
    max_top_k: int


def limits_for(info: ModelInfo, max_top_k: int = 0, max_context: int = 0) -> Limits:
    top_k = min(max_top_k or info.vocab_size, info.vocab_size)
    context = min(max_context or info.max_context, info.max_context)
    return Limits(info.vocab_size, context, top_k)


def _token_ids(tensor: pb.Tensor, where: str, limits: Limits) -> torch.Tensor:
    """Unpack an int32 [T] id vector and check every id is in the vocabulary."""
    if not tensor.ByteSize():
        raise InvalidRequest(f"{where}: missing token ids")
    try:
        array = unpack(tensor, name=where)
    except PackError as exc:
        raise InvalidRequest(str(exc)) from None
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


def _check_vocab(ids: torch.Tensor, where: str, limits: Limits) -> None:
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
        raise InvalidRequest(f"top_k={top_k} is out of range: it must be between 1 and "
                             f"{limits.max_top_k}" + (" (the vocabulary size)"
                                                      if limits.max_top_k == limits.vocab_size else ""))
    return top_k


def _temperature(request) -> float:
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature={temperature} must be a finite number > 0")
    return float(temperature)


def parse_score_request(request: pb.ScoreRequest, limits: Limits) -> list[ScoreItem]:
    """Validate a ScoreRequest into ScoreItems; raise InvalidRequest naming what is wrong."""
    if not request.sequences:
        raise InvalidRequest("the request has no sequences")
    logprob_dtype(request.logprob_dtype)
    top_k, temperature = _top_k(request, limits), _temperature(request)
    items = []
    for i, seq in enumerate(request.sequences):
        where = f"sequence {i}"
        ids = _token_ids(seq.token_ids, where, limits)
        if not 1 <= seq.score_from <= ids.numel() - 1:
            raise InvalidRequest(
                f"{where}: score_from={seq.score_from} is out of range for {ids.numel()} tokens; "
                f"it must be between 1 and {ids.numel() - 1} (position 0 has no context)")
        cands = None
        if seq.HasField("candidate_ids"):
            try:
                array = unpack(seq.candidate_ids, name=f"{where} candidate_ids")
            except PackError as exc:
                raise InvalidRequest(str(exc)) from None
            n = ids.numel() - seq.score_from
            if seq.candidate_ids.dtype != pb.DTYPE_INT32 or array.ndim != 2 \
                    or array.shape[0] != n or array.shape[1] < 1:
                raise InvalidRequest(
                    f"{where}: candidate_ids must be DTYPE_INT32 of shape [{n}, C] with C >= 1 "
                    f"(one row per scored position), got {pb.DType.Name(seq.candidate_ids.dtype)} "
                    f"{list(array.shape)}")
            cands = torch.from_numpy(array.astype("int64"))
            _check_vocab(cands, f"{where} candidate_ids", limits)
        items.append(ScoreItem(ids, int(seq.score_from), top_k, temperature, cands))
    return items


def score_result(out: ScoreOutput, dtype: int) -> pb.ScoreResult:
    result = pb.ScoreResult(
        topk_ids=pack(out.topk_ids, "int32"),
        topk_logprobs=pack(out.topk_logprobs, dtype),
        token_logprobs=pack(out.token_logprobs, dtype),
        tail_logprobs=pack(out.tail_logprobs, dtype),
    )
    if out.candidate_logprobs is not None:
        result.candidate_logprobs.CopyFrom(pack(out.candidate_logprobs, dtype))
    return result


def parse_generate_request(request: pb.GenerateRequest, limits: Limits) -> GenerateItem:
    """Validate a GenerateRequest into one GenerateItem; raise InvalidRequest."""
    if not request.prompt_ids:
        raise InvalidRequest("the request has no prompts")
    logprob_dtype(request.logprob_dtype)
    num_samples = request.num_samples or 1
    if num_samples > MAX_SAMPLES:
        raise InvalidRequest(f"num_samples={num_samples} exceeds the limit of {MAX_SAMPLES} per "
                             f"prompt; send the prompt several times instead")
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidRequest(f"temperature={temperature} must be a finite number >= 0 "
                             f"(0 is greedy)")
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
    return GenerateItem(prompts, num_samples, float(temperature), float(top_p), max_new, stop_ids, seed)


def generate_response(outputs: list[list[GeneratedSample]], dtype: int) -> pb.GenerateResponse:
    """Samples grouped by prompt: prompt 0's n samples, then prompt 1's, ..."""
    return pb.GenerateResponse(samples=[
        pb.GenerateSample(prompt_index=i, token_ids=pack(s.token_ids, "int32"),
                          token_logprobs=pack(s.logprobs, dtype),
                          finish_reason=_FINISH_REASONS[s.finish_reason])
        for i, samples in enumerate(outputs) for s in samples])


def info_response(info: ModelInfo, limits: Limits, *, max_batch_tokens: int,
                  max_message_bytes: int, server_version: str) -> pb.InfoResponse:
    return pb.InfoResponse(
        model_id=info.model_id, backend=info.backend, vocab_size=info.vocab_size,
        tokenizer_size=info.tokenizer_size, tokenizer_fingerprint=info.tokenizer_fingerprint,
        special_tokens=pb.SpecialTokens(bos=info.bos, eos=info.eos, pad=info.pad, unk=info.unk,
                                        eos_ids=info.eos_ids),
        max_context=limits.max_context, max_top_k=limits.max_top_k, max_draft_tokens=0,
        max_batch_tokens=max_batch_tokens, max_message_bytes=max_message_bytes,
        features=pb.Features(score_candidates=info.score_candidates, verify=info.verify,
                             generate=info.generate, float16_logprobs=True),
        model_dtype=info.model_dtype, server_version=server_version,
    )

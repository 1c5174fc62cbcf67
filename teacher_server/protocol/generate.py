"""Generate: a GenerateRequest -> one GenerateItem -> a GenerateResponse."""

from __future__ import annotations

import math

import torch

from distill.results import samples_to_proto
from distill.tensors import unpack
from distill.v1 import teacher_pb2 as pb
from teacher_server.errors import InvalidRequest, NotSupported
from teacher_server.generation import GenerateItem
from teacher_server.protocol.arrays import check_vocab, token_ids
from teacher_server.protocol.request import (MIN_TEMPERATURE, Limits, Parsed, check_sequences, check_tokens,
                                             logprob_dtype, require)

MAX_SAMPLES = 64   # per prompt: n samples cost n times the prompt's tokens in one batch


def parse_generate_request(request: pb.GenerateRequest, limits: Limits) -> Parsed:
    """Validate a GenerateRequest into one GenerateItem; raise InvalidRequest."""
    if not limits.features.generate:
        raise NotSupported(f"the {limits.backend} backend does not serve Generate")
    if not request.prompt_ids:
        raise InvalidRequest("the request has no prompts")
    check_sequences(len(request.prompt_ids) * max(request.num_samples, 1), limits)
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
        require(limits.features.generate_temperature, limits, f"temperature={temperature:g} (only 0 or 1)")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not 0 < top_p <= 1:       # also refuses nan
        raise InvalidRequest(f"top_p={top_p} is out of range: it must be in (0, 1]")
    max_new = request.max_new_tokens
    if max_new < 1:
        raise InvalidRequest(f"max_new_tokens={max_new} must be >= 1")
    stop_ids = list(request.stop_token_ids)
    check_vocab(torch.tensor(stop_ids, dtype=torch.long), "stop_token_ids", limits)
    seed = request.seed if request.HasField("seed") else None
    prompts = []
    for i, tensor in enumerate(request.prompt_ids):
        where = f"prompt {i}"
        ids = token_ids(tensor, where, limits)
        if ids.numel() + max_new > limits.max_context:
            raise InvalidRequest(
                f"{where}: {ids.numel()} prompt tokens + max_new_tokens={max_new} = "
                f"{ids.numel() + max_new} exceed the teacher's context of {limits.max_context} "
                f"tokens; shorten the prompt or lower max_new_tokens")
        prompts.append(ids)
    if request.return_text:
        require(limits.text is not None, limits, "return_text")
    item = GenerateItem(prompts, num_samples, float(temperature), float(top_p), max_new, stop_ids, seed)
    check_tokens(item.num_tokens, limits)

    def respond(outputs) -> pb.GenerateResponse:
        response = samples_to_proto(outputs[0], dtype)
        if request.return_text:
            for sample in response.samples:
                sample.text = limits.text.text(unpack(sample.token_ids).tolist())
        return response

    return Parsed([item], respond, len(prompts) * num_samples, item.num_tokens)

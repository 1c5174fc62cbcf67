"""Info: what this server holds (model, vocabulary, tokenizer, limits, features) as an
InfoResponse, built once at start."""

from __future__ import annotations

import dataclasses

from distill.v1 import teacher_pb2 as pb
from teacher_server.backends import ModelInfo
from teacher_server.protocol.request import Limits


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

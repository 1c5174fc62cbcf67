"""What every rpc's parser shares: the Limits a request is checked against, the caps on its size,
the Parsed it becomes, and the fields several requests have (top_k, temperature, logprob_dtype)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from distill.v1 import teacher_pb2 as pb
from teacher_server.backends import Features, ModelInfo
from teacher_server.errors import InvalidRequest, NotSupported

if TYPE_CHECKING:
    from teacher_server.protocol.text import TextCodec

DEFAULT_TOP_K = 20
_LOGPROB_DTYPES = {pb.DTYPE_UNSPECIFIED: pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT32: pb.DTYPE_FLOAT32,
                   pb.DTYPE_FLOAT16: pb.DTYPE_FLOAT16}
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
    text: "TextCodec | None" = None   # the teacher's tokenizer for the text forms (None: not served)

    def for_tenant(self, tenant) -> "Limits":
        """These limits plus `tenant`'s: a request larger than its queue or its whole per-minute
        quota could never be served, so it is refused as invalid, not as over a limit."""
        return dataclasses.replace(self, tenant=tenant.name,
                                   tenant_max_queued_tokens=tenant.max_queued_tokens,
                                   tenant_tokens_per_minute=tenant.spec.tokens_per_minute)


def limits_for(info: ModelInfo, max_top_k: int = 0, max_context: int = 0,
               max_draft_tokens: int = 16, max_request_sequences: int = 4096,
               max_request_tokens: int = 1 << 20, max_batch_tokens: int = 0,
               text: TextCodec | None = None) -> Limits:
    backend_top_k = min(info.max_top_k or info.vocab_size, info.vocab_size)
    top_k = min(max_top_k or backend_top_k, backend_top_k)
    context = min(max_context or info.max_context, info.max_context)
    return Limits(info.vocab_size, context, top_k, max_draft_tokens, max_request_sequences,
                  max_request_tokens, backend_top_k, info.backend, info.features,
                  real_vocab=info.real_vocab or 0, max_batch_tokens=max_batch_tokens, text=text)


@dataclass
class Parsed:
    """A validated request: work items for the batcher, and how to answer with their outputs."""

    items: list
    respond: Callable[[list], object]   # the items' outputs (same order) -> the response message
    num_sequences: int                  # sequences asked for (Generate: prompts x samples)
    num_tokens: int                     # tokens put through the model (the items' num_tokens)
    num_scored: int = 0                 # Score: positions scored


def check_sequences(num_sequences: int, limits: Limits) -> None:
    """The per-request cap on sequences, checked before anything is unpacked."""
    if num_sequences > limits.max_request_sequences:
        raise InvalidRequest(f"the request has {num_sequences} sequences, over the limit of "
                             f"{limits.max_request_sequences} per request; split it")


def check_tokens(tokens: int, limits: Limits) -> None:
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


def require(supported: bool, limits: Limits, what: str) -> None:
    """UNIMPLEMENTED unless the backend serves `what`."""
    if not supported:
        raise NotSupported(f"the {limits.backend} backend does not serve {what} (Info.features "
                           f"says so); use a teacher on the transformers backend for it")


def logprob_dtype(value: int) -> int:
    if value not in _LOGPROB_DTYPES:
        raise InvalidRequest(f"logprob_dtype {value} is not DTYPE_FLOAT32 or DTYPE_FLOAT16")
    return _LOGPROB_DTYPES[value]


def top_k(request, limits: Limits) -> int:
    """The request's top_k (Score, Verify), DEFAULT_TOP_K when unset."""
    k = request.top_k if request.HasField("top_k") else DEFAULT_TOP_K
    if not 1 <= k <= limits.max_top_k:
        why = (" (the vocabulary size)" if limits.max_top_k == limits.vocab_size
               else " (this server's maximum, set by --max-top-k at start)")
        raise InvalidRequest(f"top_k={k} is out of range: it must be between 1 and "
                             f"{limits.max_top_k}{why}")
    return k


def temperature(request, limits: Limits) -> float:
    """The request's scoring temperature (Score, Verify), 1 when unset."""
    value = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(value) and value >= MIN_TEMPERATURE):
        raise InvalidRequest(f"temperature={value} must be a finite number > 0 (at least "
                             f"{MIN_TEMPERATURE:g}: dividing the logits by less can overflow them)")
    if value != 1.0:
        require(limits.features.score_temperature, limits, f"temperature={value:g} (only 1)")
    return float(value)

"""Inference backends behind one interface (`Backend`); `load_backend` picks one by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

from distill.fingerprint import tokenizer_fingerprint
from distill.results import TeacherSample, TeacherScores, VerifyOutcome
from teacher_server.config import ServerSettings
from teacher_server.generation import GenerateItem
from teacher_server.scoring import ScoreItem
from teacher_server.verify import VerifyItem


@dataclass(frozen=True)
class Features:
    """Optional capabilities of a backend: the proto's Features message (its comments say what
    each means), as Info reports it and as request validation checks it."""

    score_candidates: bool = True
    verify: bool = True
    generate: bool = True
    float16_logprobs: bool = True
    score_temperature: bool = True
    verify_speculative: bool = True
    generate_temperature: bool = True
    verify_sessions: bool = False
    score_text: bool = False


@dataclass
class ModelInfo:
    """What a backend knows about its model, for Info and for request validation."""

    model_id: str
    backend: str
    vocab_size: int            # logits width: valid ids are 0 .. vocab_size - 1
    tokenizer_size: int
    tokenizer_fingerprint: str
    max_context: int
    model_dtype: str
    bos: int = -1
    eos: int = -1
    pad: int = -1
    unk: int = -1
    eos_ids: list[int] = field(default_factory=list)
    max_top_k: int = 0         # largest top_k the backend can serve (0: the vocabulary size)
    features: Features = field(default_factory=lambda: Features())

    @property
    def real_vocab(self) -> int | None:
        """The tokenizer's size when the embedding has rows past it (padding no token uses:
        they get no probability anywhere), else None."""
        return self.tokenizer_size if 0 < self.tokenizer_size < self.vocab_size else None


def special_token_id(tokenizer, name: str) -> int:
    """The tokenizer's `name` (bos, eos, pad, unk) token id, -1 when it has none."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    return -1 if value is None else int(value)


def tokenizer_fields(tokenizer, generation_eos: int | list[int] | None) -> dict:
    """The ModelInfo fields that come from the tokenizer. End-of-sequence ids are the generation
    config's (some models stop on several), else the tokenizer's."""
    eos_ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [tokenizer.eos_token_id]
    return dict(tokenizer_size=len(tokenizer), tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                eos_ids=eos_ids, **{name: special_token_id(tokenizer, name)
                                    for name in ("bos", "eos", "pad", "unk")})


class Backend(Protocol):
    info: ModelInfo

    def score(self, items: list[ScoreItem | VerifyItem]) -> list[TeacherScores | VerifyOutcome]:
        """Score and verify items in one forward pass (the batcher chose them to fit the token
        budget); a VerifyItem only when info.features.verify."""

    def generate(self, items: list[GenerateItem]) -> list[list[TeacherSample]]:
        """num_samples samples per item (only when info.features.generate)."""


def run_batch(backend: Backend, items: list) -> list:
    """The batcher's one callable: Score, Verify and Generate items share its queue and forward
    thread, so a batch may hold all three. Score and Verify items go to `score` together (both
    need one decoder pass over their tokens, so they share it); Generate items to `generate`.
    Outputs come back in the items' order. Methods are looked up only when needed: a backend
    without Generate never receives a GenerateItem (the servicer refuses those first)."""
    outputs: list = [None] * len(items)
    for kind, method in (((ScoreItem, VerifyItem), "score"), (GenerateItem, "generate")):
        rows = [i for i, item in enumerate(items) if isinstance(item, kind)]
        if rows:
            for i, out in zip(rows, getattr(backend, method)([items[i] for i in rows])):
                outputs[i] = out
    return outputs


# A backend is one row: its name (also in ServerSettings.backend's choices; a test checks they
# match) and the class that implements `Backend`, imported only when chosen (vLLM is heavy).
BACKENDS = {
    "transformers": "teacher_server.backends.hf:TransformersBackend",
    "vllm": "teacher_server.backends.vllm_backend:VllmBackend",
}


def load_backend(settings: ServerSettings) -> Backend:
    if settings.backend not in BACKENDS:
        raise ValueError(f"unknown backend {settings.backend!r}; one of {sorted(BACKENDS)}")
    module, _, name = BACKENDS[settings.backend].partition(":")
    return getattr(importlib.import_module(module), name).from_settings(settings)

"""Inference backends behind one interface (`Backend`); `load_backend` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from teacher_server.config import ServerSettings
from teacher_server.scoring import ScoreItem, ScoreOutput


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
    score_candidates: bool = True
    verify: bool = False
    generate: bool = False


class Backend(Protocol):
    info: ModelInfo

    def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        """Score items in one forward pass (the batcher chose them to fit the token budget)."""


def load_backend(settings: ServerSettings) -> Backend:
    if settings.backend == "transformers":
        from teacher_server.backends.hf import TransformersBackend

        return TransformersBackend.from_settings(settings)
    raise ValueError(f"unknown backend {settings.backend!r}")

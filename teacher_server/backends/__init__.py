"""Inference backends behind one interface (`Backend`); `load_backend` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from teacher_server.config import ServerSettings
from teacher_server.generation import GeneratedSample, GenerateItem
from teacher_server.scoring import ScoreItem, ScoreOutput
from teacher_server.speculative import VerifyItem, VerifyOutput


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

    def score(self, items: list[ScoreItem | VerifyItem]) -> list[ScoreOutput | VerifyOutput]:
        """Score and verify items in one forward pass (the batcher chose them to fit the token
        budget); a VerifyItem only when info.verify."""

    def generate(self, items: list[GenerateItem]) -> list[list[GeneratedSample]]:
        """num_samples samples per item (only when info.generate)."""


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


def load_backend(settings: ServerSettings) -> Backend:
    if settings.backend == "transformers":
        from teacher_server.backends.hf import TransformersBackend

        return TransformersBackend.from_settings(settings)
    raise ValueError(f"unknown backend {settings.backend!r}")

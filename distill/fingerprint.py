"""The tokenizer fingerprint: teacher and student must agree on what every token id means."""

from __future__ import annotations

import hashlib
import json


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (hex) of a Hugging Face tokenizer's vocabulary and special tokens.

    Two tokenizers with the same fingerprint map every string piece to the same id and share the
    same special tokens, which is what scoring one model's tokens with another needs. Added tokens
    are part of `get_vocab()`, so they count too.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())}
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

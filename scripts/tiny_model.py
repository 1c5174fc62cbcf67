"""Small causal LMs with random weights, saved as Hugging Face folders (model + tokenizer).

Tests and benchmarks use them: nothing is downloaded.

    python scripts/tiny_model.py OUT_DIR [--preset tiny|bench] [--seed 0]
"""

from __future__ import annotations

import argparse
import pathlib
import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

# Named presets. "tiny" is what tests use (fast on one CPU thread); "bench" is about 20M parameters
# (head_dim 32, so vLLM runs it too).
PRESETS = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    # "tiny" with head_dim 32 (64 / 2 heads): vLLM's CPU attention needs head_dim >= 32
    "tiny-vllm": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256),
    "bench": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
}


CHARS = SPECIALS + list(dict.fromkeys(string.printable))


def char_tokenizer(extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: specials, printable ASCII, then `extra_tokens` filler pieces
    ("<x0>", "<x1>", ...; added tokens, so decoding and encoding again gives the same ids)."""
    vocab = {piece: i for i, piece in enumerate(CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces when decoded
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_tokens([f"<x{i}>" for i in range(extra_tokens)])
    return tokenizer


def make_tiny_model(out_dir: str | pathlib.Path, preset: str = "tiny", seed: int = 0,
                    extra_tokens: int | None = None, **overrides) -> pathlib.Path:
    """Write a random-weight Llama and a char tokenizer to `out_dir`; return the path.
    extra_tokens: filler tokens after the characters; None fills the vocabulary (every id is a
    token), fewer leaves embedding rows past the tokenizer (a padded vocabulary)."""
    out_dir = pathlib.Path(out_dir)
    cfg = dict(PRESETS[preset], **overrides)
    if extra_tokens is None:
        extra_tokens = cfg["vocab_size"] - len(CHARS)
    tokenizer = char_tokenizer(extra_tokens)
    config = LlamaConfig(
        **cfg, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-uniform outputs; sharpen them so top-k and tails are not degenerate.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_model(args.out_dir, args.preset, args.seed))

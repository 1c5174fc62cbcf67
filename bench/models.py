"""The model a benchmark runs on: the random-weight `bench` preset, or any Hugging Face folder
given with --model (e.g. the real SmolLM2-135M-Instruct that `make setup` fetches)."""

from __future__ import annotations

import pathlib

import torch
from transformers import AutoConfig, AutoTokenizer

from scripts.tiny_model import make_tiny_model


def add_model_argument(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="a Hugging Face model folder, or 'smollm2' for the fetched SmolLM2-135M-Instruct "
                             "(default: a random-weight Llama of scripts/tiny_model.py's 'bench' preset)")


def bench_model(model: str | None, tmp: pathlib.Path) -> pathlib.Path:
    """The folder to benchmark: `model` (or the fetched SmolLM2 for 'smollm2'), else a fresh
    random-weight model in tmp."""
    if model == "smollm2":
        from scripts.fetch_model import fetch

        return pathlib.Path(fetch("smollm2-135m-instruct"))
    if model:
        return pathlib.Path(model)
    return make_tiny_model(pathlib.Path(tmp) / "bench-model", preset="bench")


def describe(model_dir) -> str:
    config = AutoConfig.from_pretrained(model_dir)
    return (f"{pathlib.Path(model_dir).name} ({config.model_type}, {config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}, vocabulary {config.vocab_size})")


def random_sequences(model_dir, count: int, length: int, seed: int) -> list[torch.Tensor]:
    """`count` sequences of `length` ids drawn uniformly from the tokenizer's real ids."""
    real = len(AutoTokenizer.from_pretrained(model_dir))
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, real, (length,), generator=g) for _ in range(count)]

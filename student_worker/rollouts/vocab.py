"""Padded vocabularies: models sharing one tokenizer often have more embedding rows than the
tokenizer has tokens (rounded up for the hardware), and different numbers of them. Ids at or
beyond the tokenizer's real size are no tokens: they get no probability anywhere."""

from __future__ import annotations

import torch


def mask_padded_logits(logits_V: torch.Tensor, real_vocab: int | None) -> torch.Tensor:
    """logits [..., V] with the columns >= real_vocab at -inf (a new tensor; gradients flow to
    the rest). Apply wherever the student's logits are made, before any softmax or sampling."""
    if real_vocab is None or real_vocab >= logits_V.shape[-1]:
        return logits_V
    keep_V = torch.arange(logits_V.shape[-1], device=logits_V.device) < real_vocab
    return logits_V.masked_fill(~keep_V, float("-inf"))


class RealVocabHead(torch.nn.Module):
    """An output embedding whose logits beyond the tokenizer's real size are -inf: what the
    chunked loss calls as its head, so padded ids get no mass in the student's log-softmax."""

    def __init__(self, head: torch.nn.Module, real_vocab: int | None):
        super().__init__()
        self.head, self.real_vocab = head, real_vocab

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return mask_padded_logits(self.head(hidden), self.real_vocab)

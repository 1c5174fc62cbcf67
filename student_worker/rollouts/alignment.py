"""Aligning two tokenizations of one text: the student's tokens of its completion and the
teacher's (Score's text form returns each teacher token's character span).

Both sides are cut into the shortest runs that end at the same character offset: where the two
tokenizers agree on a token, a run is one token on each side; where they segment differently,
a run holds every token of either side up to the next offset where both have a token boundary.
A run's log-probability is the sum of its tokens' on either side, which makes "log q(run) - log
p(run)" exact for any pair of tokenizers (the quantity the cross-tokenizer losses use).

Offsets are Unicode characters of the completion text. A token that holds only part of a
character (byte-level BPE splits "ç" into two byte pieces) ends where that character ends, so it
never closes a run in the middle of a character; a special token (no text: an end of turn) ends
where the text before it does. The end of the answer is not aligned here: the student's end of
turn and the teacher's are different tokens with no text, and callers pair them as a run of their
own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers.decoders import DecodeStream


def char_ends(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """The text the student's tokens `ids` decode to (special tokens left out: what the teacher
    is sent) and, per token, the character offset where it ends."""
    stream = DecodeStream(skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    pieces = [stream.step(tokenizer.backend_tokenizer, int(i)) for i in ids]
    text, ends, waiting = "", [], []   # waiting: tokens holding bytes of a character not yet complete
    for i, piece in zip(ids, pieces):
        if piece is None and int(i) not in special:
            waiting.append(len(ends))
            ends.append(-1)
            continue
        text += piece or ""
        for j in waiting:
            ends[j] = len(text)
        waiting = []
        ends.append(len(text))
    for j in waiting:          # bytes of a character the answer never finished
        ends[j] = len(text)
    return text, ends


@dataclass
class Alignment:
    """Run index of every token on each side; runs are numbered from 0 in text order."""

    student_run: torch.Tensor   # int64 [S]
    teacher_run: torch.Tensor   # int64 [T]
    num_runs: int

    def one_to_one(self) -> torch.Tensor:
        """bool [num_runs]: runs of exactly one token on each side."""
        count = lambda runs: torch.bincount(runs, minlength=self.num_runs)  # noqa: E731
        return (count(self.student_run) == 1) & (count(self.teacher_run) == 1)


def align(student_ends: list[int], teacher_ends: list[int]) -> Alignment:
    """Runs of the two tokenizations of one text, from each token's end offset (non-decreasing,
    both ending at the text's length): a run closes at every offset where both sides have a
    token ending."""
    if not student_ends or not teacher_ends or student_ends[-1] != teacher_ends[-1]:
        raise ValueError(f"the two tokenizations do not cover the same text: they end at character "
                         f"{student_ends[-1] if student_ends else 0} and {teacher_ends[-1] if teacher_ends else 0}")
    bounds = torch.tensor(sorted(set(student_ends) & set(teacher_ends)))
    run = lambda ends: torch.searchsorted(bounds, torch.tensor(ends))  # noqa: E731
    return Alignment(run(student_ends), run(teacher_ends), bounds.numel())

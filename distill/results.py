"""What the teacher answers, as tensors: one type per kind of result, built by the server from its
backend's outputs and by the client from the wire, and the converters between them and the protos.

The enum tables are written once, name -> wire value; the reverse maps are derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

import numpy as np

from distill.tensors import pack, unpack, unpack_torch
from distill.v1 import teacher_pb2 as pb

FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
FINISH_REASON_NAMES = {v: k for k, v in FINISH_REASONS.items()}
VERIFY_MODES = {"speculative": pb.VERIFY_MODE_SPECULATIVE, "topk": pb.VERIFY_MODE_TOPK,
                "greedy": pb.VERIFY_MODE_GREEDY}
VERIFY_MODE_NAMES = {v: k for k, v in VERIFY_MODES.items()}


@dataclass
class TeacherScores:
    """The teacher's view of the N scored positions of one sequence (CPU tensors); row i is
    position score_from + i."""

    topk_ids: torch.Tensor                   # integer [N, k], most likely first (int64 once decoded)
    topk_logprobs: torch.Tensor              # float32 [N, k]
    token_logprobs: torch.Tensor             # float32 [N]: the token actually in the sequence
    tail_logprobs: torch.Tensor              # float32 [N]: log of the mass outside the top-k
    candidate_logprobs: torch.Tensor | None  # float32 [N, C], or None when none were asked for

    def split(self, sizes: list[int]) -> list["TeacherScores"]:
        """Consecutive blocks of sizes[i] rows (views), one split per field."""
        parts = [None if getattr(self, f.name) is None else getattr(self, f.name).split(sizes)
                 for f in fields(TeacherScores)]
        parts[-1] = parts[-1] or [None] * len(sizes)
        return [TeacherScores(*row) for row in zip(*parts)]

    def take(self, index: torch.Tensor) -> "TeacherScores":
        """Rows `index` (int64 [M]), in that order."""
        return TeacherScores(*(None if getattr(self, f.name) is None
                               else getattr(self, f.name)[index] for f in fields(TeacherScores)))

    @staticmethod
    def concat(parts: list["TeacherScores"]) -> "TeacherScores":
        """The parts' rows one after another; they all have candidates or none has."""
        if len(parts) == 1:
            return parts[0]
        cat = lambda name: (None if getattr(parts[0], name) is None
                            else torch.cat([getattr(p, name) for p in parts]))
        return TeacherScores(*(cat(f.name) for f in fields(TeacherScores)))


@dataclass
class VerifyOutcome:
    """The teacher's verdict on one draft of G tokens (CPU tensors)."""

    num_accepted: int            # keep draft[:num_accepted] ...
    next_token: int              # ... then this: the correction, or the bonus when all were kept
    accept_probs: torch.Tensor   # float32 [G]: acceptance probability per draft position
    scores: TeacherScores        # G + 1 rows: Score of prefix + draft + [next_token] from P


@dataclass
class TeacherSample:
    """One teacher continuation of a prompt (CPU tensors; the prompt is not repeated)."""

    token_ids: torch.Tensor      # int64 [L]
    logprobs: torch.Tensor       # float32 [L]: under softmax(logits / temperature), before top-p
    finish_reason: str           # "stop" (the last token is a stop token) | "length"
    text: str | None = None      # the new tokens as text, when asked for (GenerateRequest.return_text)


def _float(tensor: pb.Tensor) -> torch.Tensor:
    return unpack_torch(tensor).float()


def _ids(tensor: pb.Tensor) -> torch.Tensor:
    """int64 ids from an int32 Tensor, in one copy."""
    return torch.from_numpy(unpack(tensor).astype(np.int64))


def scores_to_proto(scores: TeacherScores, dtype: int, into: pb.ScoreResult | None = None) -> pb.ScoreResult:
    """`dtype`: the wire DType of the log-probs. `into`: a field of the response being built,
    filled in place (see `pack`)."""
    result = pb.ScoreResult() if into is None else into
    pack(scores.topk_ids, "int32", into=result.topk_ids)
    pack(scores.topk_logprobs, dtype, into=result.topk_logprobs)
    pack(scores.token_logprobs, dtype, into=result.token_logprobs)
    pack(scores.tail_logprobs, dtype, into=result.tail_logprobs)
    if scores.candidate_logprobs is not None:
        pack(scores.candidate_logprobs, dtype, into=result.candidate_logprobs)
    return result


def scores_from_proto(result: pb.ScoreResult) -> TeacherScores:
    return TeacherScores(
        topk_ids=_ids(result.topk_ids),
        topk_logprobs=_float(result.topk_logprobs),
        token_logprobs=_float(result.token_logprobs),
        tail_logprobs=_float(result.tail_logprobs),
        candidate_logprobs=(_float(result.candidate_logprobs)
                            if result.HasField("candidate_logprobs") else None))


def scores_from_packed(result: pb.ScoreResult, offsets: pb.Tensor) -> list[TeacherScores]:
    """ScoreResponse's packed form (every sequence's rows one after another, and the int32
    [B + 1] row offsets that cut them) as one TeacherScores (views) per sequence."""
    whole, sizes = whole_scores_from_packed(result, offsets)
    return whole.split(sizes)


@dataclass
class TextScores:
    """Score's text form for one sequence: the teacher's scores of its own tokens of the completion
    (CPU tensors; row i is the teacher's token i), the tokens, and their character spans."""

    scores: TeacherScores
    token_ids: torch.Tensor      # int64 [N]: the teacher's tokenization (and its end of turn, if asked)
    char_spans: torch.Tensor     # int64 [N, 2]: [start, end) of each token in the completion's characters


def text_scores_from_response(response: pb.ScoreResponse) -> list[TextScores]:
    """A text-form answer (packed, with token_ids and char_spans per row), one per sequence."""
    whole, sizes = whole_scores_from_packed(response.packed, response.offsets)
    ids = torch.from_numpy(unpack(response.token_ids, name="token_ids").astype(np.int64))
    spans = torch.from_numpy(unpack(response.char_spans, name="char_spans").astype(np.int64)).reshape(-1, 2)
    return [TextScores(scores, i, s) for scores, i, s in zip(whole.split(sizes), ids.split(sizes), spans.split(sizes))]


def whole_scores_from_packed(result: pb.ScoreResult, offsets: pb.Tensor) -> tuple[TeacherScores, list[int]]:
    """The packed answer as one TeacherScores (every sequence's rows one after another) and the
    number of rows of each sequence, after checking that the offsets cut the rows."""
    whole = scores_from_proto(result)
    bounds = unpack(offsets, name="offsets")
    rows = whole.token_logprobs.shape[0]
    if bounds.ndim != 1 or not bounds.size or bounds[0] != 0 or bounds[-1] != rows \
            or (np.diff(bounds) < 0).any():
        raise ValueError(f"the teacher's packed answer has row offsets {bounds.tolist()[:8]}... "
                         f"that do not cut its {rows} rows into sequences")
    return whole, np.diff(bounds).tolist()


def verify_to_proto(outcome: VerifyOutcome, dtype: int, into: pb.VerifyResult | None = None) -> pb.VerifyResult:
    """`into`: as in scores_to_proto."""
    result = pb.VerifyResult() if into is None else into
    result.num_accepted, result.next_token = outcome.num_accepted, outcome.next_token
    pack(outcome.accept_probs, "float32", into=result.accept_probs)
    scores_to_proto(outcome.scores, dtype, into=result.scores)
    return result


def verify_from_proto(result: pb.VerifyResult) -> VerifyOutcome:
    return VerifyOutcome(num_accepted=int(result.num_accepted), next_token=int(result.next_token),
                         accept_probs=_float(result.accept_probs),
                         scores=scores_from_proto(result.scores))


def samples_to_proto(samples: list[list[TeacherSample]], dtype: int) -> pb.GenerateResponse:
    """samples[i]: prompt i's samples. On the wire they are grouped by prompt, in that order."""
    response = pb.GenerateResponse()
    for i, per_prompt in enumerate(samples):
        for s in per_prompt:
            sample = response.samples.add(prompt_index=i, finish_reason=FINISH_REASONS[s.finish_reason])
            pack(s.token_ids, "int32", into=sample.token_ids)
            pack(s.logprobs, dtype, into=sample.token_logprobs)
    return response


def samples_from_proto(response: pb.GenerateResponse, num_prompts: int) -> list[list[TeacherSample]]:
    """One list per prompt, its samples in the server's order."""
    grouped: list[list[TeacherSample]] = [[] for _ in range(num_prompts)]
    for sample in response.samples:
        grouped[sample.prompt_index].append(TeacherSample(
            token_ids=_ids(sample.token_ids), logprobs=_float(sample.token_logprobs),
            finish_reason=FINISH_REASON_NAMES.get(sample.finish_reason, "unspecified"),
            text=sample.text or None))
    return grouped

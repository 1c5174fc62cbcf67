"""A batch of prompt + completion sequences and its tensors for the loss.

Everything the loss sees is aligned by *target* position: index s of a [B, S] tensor describes
the token at position s + 1, predicted from tokens 0..s (S = T - 1). Completion tokens are the
only targets that count (mask_BS).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from distill.results import TeacherScores
from student_worker.rollouts.tokens import pad


@dataclass
class Rollout:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    source: str                                    # "student", "data", "teacher" or "interleaved"
    sampled_logprobs: list[torch.Tensor] | None = None  # the student's, at sampling time
    rewards: torch.Tensor | None = None            # [B], from the task's check
    teacher_scores: list | None = None             # TeacherScores per sequence, when the rollout
                                                   # already holds them (skd: from Verify)
    drafts: tuple[int, int] | None = None          # skd: (drafts the teacher kept, drafts sent)
    sampler_weights_step: int | None = None        # sampling.engine=vllm: the optimizer step of
                                                   # the weights the engine sampled with
    teachers: list[str] | None = None              # the teacher that scores each sequence (named
                                                   # teachers; set by the trainer)

    @property
    def sequences(self) -> list[list[int]]:
        return [p + c for p, c in zip(self.prompt_ids, self.completion_ids)]

    @property
    def prompt_lens(self) -> list[int]:
        return [len(p) for p in self.prompt_ids]

    @property
    def acceptance(self) -> float | None:
        """skd: the fraction of the student's drafts the teacher kept."""
        return None if self.drafts is None else self.drafts[0] / max(self.drafts[1], 1)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    @classmethod
    def concat(cls, parts: list["Rollout"]) -> "Rollout":
        """The parts' sequences one after another (train.pipeline_halves: the halves of one step).

        Every field is merged by its rule in _MERGE; a field without one is an error, so a field
        added later is never dropped here. A field is None in every part or in none."""
        names = [f.name for f in dataclasses.fields(cls)]
        if missing := [name for name in names if name not in _MERGE]:
            raise TypeError(f"Rollout.concat has no rule for {missing}: add one to rollout._MERGE")
        if not parts:
            raise ValueError("no rollouts to concat")
        if len(parts) == 1:
            return parts[0]
        merged = {}
        for name in names:
            values = [getattr(part, name) for part in parts]
            if all(v is None for v in values):
                merged[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"cannot concat rollouts: {name} is set in some parts only")
            else:
                merged[name] = _MERGE[name](name, values)
        return cls(**merged)


def _joined(name: str, values: list[list]) -> list:
    """Per-sequence lists: the parts' items one after another."""
    return [x for v in values for x in v]


def _catted(name: str, values: list[torch.Tensor]) -> torch.Tensor:
    """Per-sequence tensors ([B, ...]): concatenated along B."""
    return torch.cat(values)


def _agreed(name: str, values: list):
    """A property of the whole batch (its source, the weights it was sampled with): the parts
    must agree, or the merged batch would state it wrongly for some of its rows."""
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"cannot concat rollouts with different {name}: {values}")
    return values[0]


def _summed(name: str, values: list[tuple]) -> tuple:
    """Counts (skd's kept and sent drafts): the parts' sums."""
    return tuple(sum(v) for v in zip(*values))


# Rollout.concat's rule for every field of Rollout: rule(field name, the parts' values) -> value
_MERGE = {
    "prompt_ids": _joined,
    "completion_ids": _joined,
    "source": _agreed,
    "sampled_logprobs": _joined,
    "rewards": _catted,
    "teacher_scores": _joined,
    "drafts": _summed,
    "sampler_weights_step": _agreed,
    "teachers": _joined,
}


@dataclass
class TokenBatch:
    input_ids_BT: torch.Tensor    # right-padded
    attention_BT: torch.Tensor
    targets_BS: torch.Tensor      # input_ids shifted left
    mask_BS: torch.Tensor         # bool: target is a completion token
    token_weights_BS: torch.Tensor | None = None  # per-token loss weights (TIS), None: all 1


def token_batch(rollout: Rollout, pad_id: int) -> TokenBatch:
    seqs = rollout.sequences
    input_ids_BT, attention_BT = pad(seqs, pad_id, side="right")
    mask_BS = completion_mask(rollout, input_ids_BT.shape[1] - 1)
    return TokenBatch(input_ids_BT, attention_BT, input_ids_BT[:, 1:], mask_BS)


def completion_mask(rollout: Rollout, S: int) -> torch.Tensor:
    """bool [B, S]: targets plen - 1 .. len - 2, which predict the completion tokens."""
    target_S = torch.arange(S)
    prompt_B1 = torch.tensor(rollout.prompt_lens)[:, None]
    end_B1 = torch.tensor([len(c) for c in rollout.completion_ids])[:, None] + prompt_B1
    return (target_S >= prompt_B1 - 1) & (target_S < end_B1 - 1)


@dataclass
class TeacherBatch:
    """The teacher's Score answers placed on the [B, S] target grid. Off-mask positions hold a
    stand-in spreading the mass evenly over the K+1 buckets: every bucket finite, so no divergence
    is infinite there (masking an inf still sends 0 * inf = NaN into the gradient)."""

    topk_ids_BSK: torch.Tensor
    topk_logprobs_BSK: torch.Tensor
    tail_logprobs_BS: torch.Tensor
    token_logprobs_BS: torch.Tensor


def teacher_batch(scores: TeacherScores | list[TeacherScores], rollout: Rollout, S: int) -> TeacherBatch:
    """The teacher's rows placed on the completion targets. `scores`: every sequence's rows one
    after another (TeacherClient.score_packed), or one TeacherScores per sequence; either way
    row i of the whole is the i-th completion target in row-major order, so the placement is
    one masked copy per field."""
    if isinstance(scores, list):
        scores = TeacherScores.concat(scores)
    mask_BS = completion_mask(rollout, S)
    rows = int(mask_BS.sum())
    if scores.token_logprobs.shape[0] != rows:
        raise ValueError(f"the teacher scored {scores.token_logprobs.shape[0]} positions for a batch "
                         f"with {rows} completion tokens")
    B, K = len(rollout.prompt_ids), scores.topk_ids.shape[-1]
    ids = torch.arange(K).expand(B, S, K).clone()
    logprobs = torch.full((B, S, K), -math.log(K + 1))
    tail = torch.full((B, S), -math.log(K + 1))
    token = torch.zeros((B, S))
    ids[mask_BS], logprobs[mask_BS] = scores.topk_ids, scores.topk_logprobs
    tail[mask_BS], token[mask_BS] = scores.tail_logprobs, scores.token_logprobs
    return TeacherBatch(ids, logprobs, tail, token)


def to_device(tensors, device):
    """A TokenBatch or TeacherBatch with every tensor moved to `device`."""
    return dataclasses.replace(tensors, **{f.name: getattr(tensors, f.name).to(device)
                                           for f in dataclasses.fields(tensors)
                                           if getattr(tensors, f.name) is not None})

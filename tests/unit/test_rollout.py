"""A rollout on the loss's grid: targets and teacher arrays line up with the completion tokens,
the vectorised batch equals the row-by-row build, and rollouts merge field by field."""

import dataclasses

import pytest
import torch

from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from distill.results import TeacherScores


def test_targets_and_teacher_arrays_line_up():
    rollout = Rollout([[5, 6, 7], [9]], [[1, 2], [3, 4, 2]], "data")
    batch = token_batch(rollout, pad_id=0)
    assert batch.input_ids_BT.tolist() == [[5, 6, 7, 1, 2], [9, 3, 4, 2, 0]]
    # target s is token s + 1: completion tokens only
    assert batch.mask_BS.tolist() == [[False, False, True, True], [True, True, True, False]]
    assert batch.targets_BS[batch.mask_BS].tolist() == [1, 2, 3, 4, 2]
    scores = [TeacherScores(torch.tensor([[11], [12]]), torch.tensor([[-0.1], [-0.2]]),
                            torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]), None),
              TeacherScores(torch.tensor([[21], [22], [23]]), torch.tensor([[-0.3], [-0.4], [-0.5]]),
                            torch.tensor([-5.0, -6.0, -7.0]), torch.tensor([-8.0, -9.0, -10.0]), None)]
    teacher = teacher_batch(scores, rollout, 4)
    assert teacher.topk_ids_BSK[batch.mask_BS][:, 0].tolist() == [11, 12, 21, 22, 23]
    assert teacher.token_logprobs_BS[batch.mask_BS].tolist() == [-1.0, -2.0, -5.0, -6.0, -7.0]
    # off-grid stand-ins are proper, finite distributions
    off = teacher.topk_logprobs_BSK[~batch.mask_BS].exp().sum(-1) + teacher.tail_logprobs_BS[~batch.mask_BS].exp()
    torch.testing.assert_close(off, torch.ones_like(off))
    # the packed answer (all rows one after another) lands on the same grid
    whole = teacher_batch(TeacherScores.concat(scores), rollout, 4)
    for field in dataclasses.fields(teacher):
        assert torch.equal(getattr(whole, field.name), getattr(teacher, field.name)), field.name
    with pytest.raises(ValueError, match="scored 2 positions for a batch with 5 completion tokens"):
        teacher_batch(scores[:1], rollout, 4)


def test_batches_equal_the_row_by_row_build():
    """The vectorised grid equals the plain per-row construction on a ragged random batch."""
    g = torch.Generator().manual_seed(0)
    lengths = lambda n, lo, hi: torch.randint(lo, hi, (n,), generator=g).tolist()
    prompts = [torch.randint(3, 50, (n,), generator=g).tolist() for n in lengths(9, 1, 7)]
    completions = [torch.randint(3, 50, (n,), generator=g).tolist() for n in lengths(9, 0, 6)]
    rollout = Rollout(prompts, completions, "student")
    batch = token_batch(rollout, pad_id=0)
    B, T = batch.input_ids_BT.shape
    assert T == max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids, mask = torch.zeros((B, T), dtype=torch.long), torch.zeros((B, T - 1), dtype=torch.bool)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids[row, :len(p + c)] = torch.tensor(p + c)
        mask[row, len(p) - 1:len(p + c) - 1] = True
    assert torch.equal(batch.input_ids_BT, ids) and torch.equal(batch.mask_BS, mask)
    assert torch.equal(batch.attention_BT, (torch.arange(T) < torch.tensor([len(p + c) for p, c in
                                                                           zip(prompts, completions)])[:, None]).long())
    rows = [TeacherScores(torch.randint(0, 50, (len(c), 3), generator=g), torch.randn(len(c), 3, generator=g),
                          torch.randn(len(c), generator=g), torch.randn(len(c), generator=g), None)
            for c in completions]
    teacher = teacher_batch(rows, rollout, T - 1)
    for row, (p, sc) in enumerate(zip(prompts, rows)):
        window = slice(len(p) - 1, len(p) - 1 + len(sc.token_logprobs))
        assert torch.equal(teacher.topk_ids_BSK[row, window], sc.topk_ids)
        assert torch.equal(teacher.tail_logprobs_BS[row, window], sc.tail_logprobs)
    halves = Rollout.concat([Rollout(prompts[:4], completions[:4], "student", rewards=torch.zeros(4)),
                             Rollout(prompts[4:], completions[4:], "student", rewards=torch.ones(5))])
    assert halves.sequences == rollout.sequences and halves.rewards.tolist() == [0] * 4 + [1] * 5


def test_concat_merges_every_field_by_its_rule():
    """train.pipeline_halves joins a step's halves with Rollout.concat: nothing may be dropped
    (sampler_weights_step switches on the importance weights and the mismatch metric)."""
    lp = lambda n: [torch.full((n,), -0.5)]
    half = lambda p, c, r, step=3: Rollout([p], [c], "student", sampled_logprobs=lp(len(c)),
                                           rewards=torch.tensor([r]), teacher_scores=[None],
                                           sampler_weights_step=step)
    whole = Rollout.concat([half([1], [2, 3], 0.0), half([4, 5], [6], 1.0)])
    assert whole.sequences == [[1, 2, 3], [4, 5, 6]] and whole.source == "student"
    assert [len(x) for x in whole.sampled_logprobs] == [2, 1] and whole.rewards.tolist() == [0.0, 1.0]
    assert whole.teacher_scores == [None, None] and whole.acceptance is None
    assert whole.sampler_weights_step == 3
    # halves sampled with different weights, or by different sources, are no one batch
    with pytest.raises(ValueError, match="different sampler_weights_step"):
        Rollout.concat([half([1], [2], 0.0, step=3), half([1], [2], 0.0, step=4)])
    with pytest.raises(ValueError, match="sampler_weights_step is set in some parts only"):
        Rollout.concat([half([1], [2], 0.0), half([1], [2], 0.0, step=None)])
    with pytest.raises(ValueError, match="different source"):
        Rollout.concat([Rollout([[1]], [[2]], "student"), Rollout([[1]], [[2]], "data")])
    # skd's acceptance merges by its counts (named teachers: one part per teacher)
    kept_1_of_2, kept_3_of_3 = (Rollout([[1]], [[2]], "interleaved", drafts=d) for d in ((1, 2), (3, 3)))
    assert Rollout.concat([kept_1_of_2]).acceptance == 0.5
    assert Rollout.concat([kept_1_of_2, kept_3_of_3]).acceptance == 4 / 5


def test_concat_refuses_a_field_without_a_rule():
    @dataclasses.dataclass
    class Extended(Rollout):
        note: str | None = None

    with pytest.raises(TypeError, match=r"no rule for \['note'\]"):
        Extended.concat([Extended([[1]], [[2]], "data"), Extended([[1]], [[2]], "data")])
    with pytest.raises(TypeError, match="no rule"):   # even where one part has nothing to merge
        Extended.concat([Extended([[1]], [[2]], "data")])

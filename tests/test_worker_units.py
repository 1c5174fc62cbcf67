"""Worker pieces on their own: the target grid, the sampler, methods, the patient teacher
(the configuration: tests/test_config.py)."""

import pytest
import torch

from student_worker.config import load_config
from student_worker.rollout import Rollout, teacher_batch, token_batch
from distill.results import TeacherScores

REQUIRED = ["student.path=s", "teacher.target=t:1", "data.source=reverse"]


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


def test_sampler_stops_at_eos_and_returns_its_logprobs(reference_model):
    from student_worker.sampling import sample

    torch.manual_seed(0)
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = sample(reference_model, prompts, max_new_tokens=12, temperature=1.0, eos_ids=[2], pad_id=0)
    for prompt, completion in zip(prompts, out):
        tokens = completion.token_ids
        assert 1 <= len(tokens) <= 12
        assert (2 in tokens) == completion.finished and (not completion.finished or tokens[-1] == 2)
        with torch.no_grad():
            logits = reference_model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        torch.testing.assert_close(completion.logprobs, expected, atol=1e-4, rtol=0)
    greedy = sample(reference_model, prompts, max_new_tokens=5, temperature=0, eos_ids=[2], pad_id=0)
    alone = sample(reference_model, prompts[1:], max_new_tokens=5, temperature=0, eos_ids=[2], pad_id=0)
    assert greedy[1].token_ids == alone[0].token_ids   # left padding does not change the answer


def test_what_a_method_needs_follows_from_its_parts():
    from student_worker.methods import METHODS

    cfg = load_config(None, "gkd", [*REQUIRED, "teacher.top_k=7"])
    assert [name for name, m in sorted(METHODS.items()) if not m.needs_teacher] == ["sft"]
    assert METHODS["rlkd"].score_top_k(cfg) == 1 and METHODS["gkd"].score_top_k(cfg) == 7
    assert METHODS["gkd"].needs_scores(Rollout([[1]], [[2]], "student"))
    # skd's rollouts already hold Verify's log-probs: no second call
    assert not METHODS["skd"].needs_scores(Rollout([[1]], [[2]], "interleaved", teacher_scores=[None]))
    assert not METHODS["seqkd"].needs_scores(Rollout([[1]], [[2]], "teacher"))


def test_patient_teacher_announces_retries_on_rank_0_only(caplog):
    import socket

    from student_worker.teacher import PatientTeacher, TeacherUnreachable
    from student_worker.teacher_client import TeacherClient

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with TeacherClient(f"127.0.0.1:{port}", timeout=0.2) as client:
        for announce in (False, True):
            teacher = PatientTeacher(client, patience_s=1.0, announce=announce)
            with pytest.raises(TeacherUnreachable, match="unreachable for"):
                teacher.score([[1, 2, 3]], 1)
            assert teacher.outage_seconds > 0
            assert ("retrying in" in caplog.text) == announce
            caplog.clear()

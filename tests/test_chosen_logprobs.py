"""Sampling keeps only the chosen tokens' log-probs (a LogitsProcessor): the same tokens and
log-probs for a seed as the path that keeps every step's logits (return_probs)."""

import pytest
import torch

from student_worker.sampling import sample


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_same_tokens_and_logprobs_as_the_logits_path(reference_model, temperature, top_p):
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    kwargs = dict(max_new_tokens=12, temperature=temperature, top_p=top_p, eos_ids=[2], pad_id=0)
    torch.manual_seed(3)
    from_logits = sample(reference_model, prompts, return_probs=True, **kwargs)
    torch.manual_seed(3)
    lean = sample(reference_model, prompts, **kwargs)
    assert len({len(c.token_ids) for c in from_logits}) > 1 or temperature == 0   # uneven lengths seen
    for a, b in zip(from_logits, lean):
        assert a.token_ids == b.token_ids and a.finished == b.finished and b.probs is None
        torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.probs.gather(-1, torch.tensor(a.token_ids)[:, None])[:, 0].log(),
                                   a.logprobs, atol=1e-5, rtol=0)

"""Sampling that keeps only the chosen tokens' log-probs equals today's sampler for a seed."""

import pytest
import torch

from student_worker.chosen_logprobs import sample_chosen
from student_worker.sampling import sample


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_same_tokens_and_logprobs_as_sample(reference_model, temperature, top_p):
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    kwargs = dict(max_new_tokens=12, temperature=temperature, top_p=top_p, eos_ids=[2], pad_id=0)
    torch.manual_seed(3)
    today = sample(reference_model, prompts, **kwargs)
    torch.manual_seed(3)
    lean = sample_chosen(reference_model, prompts, **kwargs)
    assert len({len(c.token_ids) for c in today}) > 1 or temperature == 0   # uneven lengths seen
    for a, b in zip(today, lean):
        assert a.token_ids == b.token_ids and a.finished == b.finished
        torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-6, rtol=0)

"""The student's decode loop samples what Hugging Face `generate` samples, seed for seed."""

import pytest
import torch
from transformers import GenerationConfig

from student_worker.rollouts.sampling import sample
from student_worker.rollouts.tokens import cut_at_eos, pad

PROMPTS = [[5, 6, 7, 8], [9, 10], [3, 4, 11, 12, 13, 14], [7]]


def generate_reference(model, prompts, max_new_tokens, temperature, top_p, eos_ids, pad_id):
    """(tokens, log-probs) per prompt from HF generate: the sampler this loop replaced."""
    ids_BP, mask_BP = pad(prompts, pad_id, side="left")
    greedy = temperature == 0
    config = GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None if greedy else 0, max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids, pad_token_id=pad_id, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        out = model.generate(input_ids=ids_BP, attention_mask=mask_BP, generation_config=config)
    new_BL = out.sequences[:, ids_BP.shape[1]:]
    logprobs_BLV = torch.log_softmax(torch.stack(out.logits, 1).float() / (temperature or 1.0), -1)
    logprobs_BL = logprobs_BLV.gather(-1, new_BL[..., None])[..., 0]
    rows = [cut_at_eos(row, eos_ids)[0] for row in new_BL.tolist()]
    return rows, [logprobs_BL[i, :len(r)] for i, r in enumerate(rows)]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8), (1.0, 0.5), (0, 1.0)])
def test_samples_equal_hf_generate_for_a_seed(reference_model, temperature, top_p):
    torch.set_num_threads(1)
    # a max_new_tokens past most EOSs: rows end at different steps, so padding after the end counts
    kwargs = dict(max_new_tokens=12, temperature=temperature, top_p=top_p, eos_ids=[2, 3], pad_id=0)
    for seed in range(3):
        torch.manual_seed(seed)
        expected_tokens, expected_logprobs = generate_reference(reference_model, PROMPTS * 4, **kwargs)
        torch.manual_seed(seed)
        got = sample(reference_model, PROMPTS * 4, **kwargs)
        assert [c.token_ids for c in got] == expected_tokens
        for c, lp in zip(got, expected_logprobs):
            torch.testing.assert_close(c.logprobs, lp, atol=1e-5, rtol=0)
            assert c.finished == (bool(c.token_ids) and c.token_ids[-1] in (2, 3))


def test_return_probs_is_the_tempered_distribution_of_each_step(reference_model):
    torch.manual_seed(0)
    out = sample(reference_model, PROMPTS, max_new_tokens=6, temperature=0.8, eos_ids=[2], pad_id=0,
                 return_probs=True)
    for c in out:
        assert c.probs.shape == (len(c.token_ids), reference_model.config.vocab_size)
        torch.testing.assert_close(c.probs.sum(-1), torch.ones(len(c.token_ids)))
        chosen = c.probs.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(chosen.log(), c.logprobs)
def test_sampler_stops_at_eos_and_returns_its_logprobs(reference_model):
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

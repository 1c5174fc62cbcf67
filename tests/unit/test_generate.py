"""Generate's pure pieces: stop cutting, the chosen tokens' log-probs, the backend's recorder against
`generate` keeping every logit, the batch dispatch (over gRPC: tests/integration/test_generate.py)."""

import pytest
import torch

from teacher_server.backends import run_batch
from teacher_server.generation import ChosenLogprobs, GenerateItem, cut_at_stop
from teacher_server.scoring import ScoreItem
from tests.helpers import random_sequences

VOCAB, EOS = 512, 2


def test_cut_at_stop_keeps_the_first_stop_token():
    tokens, logprobs = torch.tensor([5, 7, 2, 7, 2]), -torch.arange(5.0)
    cut = cut_at_stop(tokens, logprobs, [2, 9])
    assert cut.token_ids.tolist() == [5, 7, 2] and cut.logprobs.tolist() == [0, -1, -2]
    assert cut.finish_reason == "stop"
    assert cut_at_stop(tokens, logprobs, []).finish_reason == "length"
    assert cut_at_stop(tokens, logprobs, [3]).token_ids.tolist() == tokens.tolist()


def test_chosen_logprobs_apply_temperature_and_score_greedy_at_one():
    logits_BLV = torch.randn(3, 4, 11, dtype=torch.float64)
    tokens_BL = torch.randint(0, 11, (3, 4))
    prompt_B2 = torch.zeros(3, 2, dtype=torch.long)
    for t, scale in ((0.5, 0.5), (0.0, 1.0)):
        chosen = ChosenLogprobs(t)
        for i in range(4):   # as generate calls it: the ids so far, then this step's logits
            ids_BL = torch.cat([prompt_B2, tokens_BL[:, :i]], dim=1)
            step_BV = logits_BLV[:, i]
            assert chosen(ids_BL, step_BV) is step_BV      # the scores pass through unchanged
        ref = torch.log_softmax(logits_BLV / scale, -1).gather(-1, tokens_BL[..., None])[..., 0]
        torch.testing.assert_close(chosen.finish(tokens_BL).double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (0.7, 0.9), (1.0, 1.0)])
def test_backend_generate_equals_generate_with_all_logits_kept(tiny_model_dir, temperature, top_p):
    """The recorder gives the same tokens and log-probs as `generate(output_logits=True)` (the
    way that kept every step's logits) for a seed, including top-p truncated sampling."""
    from teacher_server.backends.hf import TransformersBackend
    from teacher_server.config import ServerSettings

    backend = TransformersBackend.from_settings(ServerSettings(model=str(tiny_model_dir), device="cpu"))
    prompts = [torch.tensor(p) for p in random_sequences(3, [4, 9, 15], VOCAB, seed=12)]
    item = GenerateItem(prompts, 2, temperature, top_p, 10, [EOS], seed=5)
    [got] = backend.generate([item])
    width = max(p.numel() for p in prompts)
    rows = [p for p in prompts for _ in range(2)]
    ids_BP = torch.stack([torch.cat([torch.zeros(width - p.numel(), dtype=torch.long), p]) for p in rows])
    options = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature
               else dict(do_sample=False))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(5)
        out = backend.model.generate(ids_BP, attention_mask=(torch.arange(width) >= width - torch.tensor(
            [p.numel() for p in rows])[:, None]).long(), max_new_tokens=10, eos_token_id=[EOS],
            pad_token_id=0, return_dict_in_generate=True, output_logits=True, **options)
    new_BL = out.sequences[:, width:]
    ref_BL = torch.stack([torch.log_softmax(l.float() / (temperature or 1.0), -1).gather(
        -1, new_BL[:, i, None])[:, 0] for i, l in enumerate(out.logits)], dim=1)
    for row, sample in enumerate(s for per_prompt in got for s in per_prompt):
        n = sample.token_ids.numel()
        assert sample.token_ids.tolist() == new_BL[row, :n].tolist()
        torch.testing.assert_close(sample.logprobs, ref_BL[row, :n], atol=1e-6, rtol=0)


def test_run_batch_sends_each_kind_to_its_method_in_order():
    class Fake:
        def score(self, items):
            return [("score", item.score_from) for item in items]

        def generate(self, items):
            return [("generate", item.num_samples) for item in items]

    gen = lambda n: GenerateItem([torch.tensor([1, 2])], n, 1.0, 1.0, 4, [], None)
    score = lambda start: ScoreItem.one(torch.tensor([1, 2, 3]), start, 1)
    items = [gen(1), score(1), gen(2), score(2)]
    assert run_batch(Fake(), items) == [("generate", 1), ("score", 1), ("generate", 2), ("score", 2)]
    assert gen(3).num_tokens == (2 + 4) * 3

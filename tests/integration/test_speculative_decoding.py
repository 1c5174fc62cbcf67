"""Speculative decoding through Verify from the worker's side: interleaving, targets, metrics."""

import subprocess
import sys

import torch

from student_worker.rollouts.speculative import acceptance, speculative_generate
from tests.helpers import random_sequences


def test_greedy_with_the_teacher_as_draft_reproduces_teacher_greedy(client, reference_model):
    prompts = random_sequences(3, [4, 7, 2], 100, seed=11)
    results = speculative_generate(reference_model, client, prompts, gamma=3, max_new_tokens=10,
                                   mode="greedy", temperature=1.0, eos_ids=[2], pad_id=0, score_top_k=8)
    for prompt, r in zip(prompts, results):
        with torch.no_grad():
            ref = reference_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10,
                                           eos_token_id=2, pad_token_id=0, top_k=None)[0, len(prompt):]
        cut = (ref == 2).nonzero()
        ref = ref[: int(cut[0]) + 1] if cut.numel() else ref
        assert r.completion == ref.tolist()
        # the targets Verify returned equal a Score call on the final sequence
        score = client.score([prompt + r.completion], len(prompt), top_k=8)[0]
        assert torch.equal(r.teacher.topk_ids, score.topk_ids)
        torch.testing.assert_close(r.teacher.topk_logprobs, score.topk_logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(r.teacher.token_logprobs, score.token_logprobs, atol=1e-5, rtol=0)
    stats = acceptance(results)
    assert stats["acceptance_rate"] == 1.0 and stats["tokens_per_call"] > 3


def test_a_different_draft_is_corrected_and_counted(client, tiny_model_dir, tmp_path):
    from scripts.tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "draft", seed=5))
    prompts = random_sequences(4, [5], 100, seed=12)
    results = speculative_generate(other, client, prompts, gamma=4, max_new_tokens=12, mode="topk",
                                   accept_top_k=3, temperature=1.0, eos_ids=[2], pad_id=0, seed=0)
    for r in results:
        assert 1 <= len(r.completion) <= 12 and r.teacher.topk_ids.shape[0] == len(r.completion)
        assert r.accepted <= r.drafted
    stats = acceptance(results)
    assert 0 <= stats["acceptance_rate"] < 1


def test_cli_reports_acceptance_and_speedup(teacher, tiny_model_dir):
    done = subprocess.run(
        [sys.executable, "-m", "student_worker.rollouts.speculative", "--teacher", teacher.target, "--student",
         str(tiny_model_dir), "--prompt", "hello", "--prompt", "abc", "--max-new-tokens", "8", "--seed", "1",
         "--compare"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "acceptance rate" in done.stdout and "tokens per teacher call" in done.stdout
    assert "speedup" in done.stdout

"""Task accuracy of a model: greedy, sampled at temperature 1, and the diversity of its answers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from student_worker.rollouts.sampling import sample
from student_worker.rollouts.tokens import pad_id_of
from student_worker.tasks import Task


@dataclass
class Accuracy:
    greedy: float      # fraction correct with greedy decoding
    sampled: float     # fraction correct sampling at temperature 1
    diversity: float   # distinct correct answers per prompt over `samples_per_prompt` samples
    # per prompt, in split order: what paired comparisons (student_worker.tools.stats) resample
    greedy_correct: list[float] = field(default_factory=list, repr=False)
    sampled_correct: list[float] = field(default_factory=list, repr=False)


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, split: str = "test", num_prompts: int = 256,
             samples_per_prompt: int = 8, diversity_prompts: int = 32, max_new_tokens: int = 16,
             seed: int = 0, batch_size: int = 512) -> Accuracy:
    """Check the answers to `num_prompts` prompts of `split` with the task's exact check.

    Sampling is seeded (and the caller's RNG state restored), so two models are compared on the
    same draws and evaluation does not disturb training's random stream.
    """
    examples = task.examples(split, num_prompts)
    eos = [tokenizer.eos_token_id]
    pad = pad_id_of(tokenizer, eos)
    was_training = model.training
    model.eval()

    def correct(prompts, temperature):
        answers = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids = [tokenizer(p).input_ids for p in chunk]
            outs = sample(model, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                          eos_ids=eos, pad_id=pad)
            answers += [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
        return [(a, task.check(p, a)) for p, a in zip(prompts, answers)]

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        prompts = [e["prompt"] for e in examples]
        greedy = [ok for _, ok in correct(prompts, 0.0)]
        sampled = [ok for _, ok in correct(prompts, 1.0)]
        few = prompts[:diversity_prompts]
        repeated = [p for p in few for _ in range(samples_per_prompt)]
        results = correct(repeated, 1.0)
        distinct = [{a for a, ok in results[i * samples_per_prompt:(i + 1) * samples_per_prompt] if ok}
                    for i in range(len(few))]
    model.train(was_training)
    return Accuracy(sum(greedy) / len(prompts), sum(sampled) / len(prompts), sum(map(len, distinct)) / len(few),
                    greedy, sampled)

"""The training methods: where completions come from, and the loss on them.

| method | completions from                          | loss                                   |
| ------ | ----------------------------------------- | -------------------------------------- |
| sft    | the data set                              | cross-entropy                          |
| seqkd  | teacher Generate (best of n by the task)  | cross-entropy                          |
| kd     | the data set                              | divergence to the teacher's top-k      |
| gkd    | the student w.p. lambda, else the data set | divergence to the teacher's top-k      |
| skd    | student drafts kept or fixed by Verify     | divergence to the teacher's top-k      |
| rlkd   | the student                               | policy gradient on reward - c * (log q - log p) |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from student_worker import divergences as D
from student_worker.config import RunConfig
from student_worker.data import Example
from student_worker.rollout import Rollout, TeacherBatch, TokenBatch
from student_worker.sampling import sample
from student_worker.speculative import acceptance, speculative_generate
from student_worker.tasks import Task


@dataclass
class Context:
    """What producing completions needs besides the examples."""

    cfg: RunConfig
    model: torch.nn.Module          # the unwrapped student (no DDP wrapper) for sampling
    tokenizer: object
    eos_ids: list[int]
    pad_id: int
    task: Task | None
    teacher_call: Callable          # teacher_call(fn_name, *args, **kwargs), patient with outages


def _data_rollout(examples: list[Example], method: str) -> Rollout:
    missing = [i for i, ex in enumerate(examples) if ex.completion_ids is None]
    if missing:
        raise ValueError(f"method {method!r} trains on data completions, but examples {missing} "
                         "have none (add a 'completion' field or pick gkd/rlkd)")
    return Rollout([ex.prompt_ids for ex in examples], [ex.completion_ids for ex in examples], "data")


def _student_rollout(examples: list[Example], ctx: Context) -> Rollout:
    s = ctx.cfg.sampling
    completions = sample(ctx.model, [ex.prompt_ids for ex in examples], max_new_tokens=s.max_new_tokens,
                         temperature=s.temperature, top_p=s.top_p, eos_ids=ctx.eos_ids, pad_id=ctx.pad_id)
    rollout = Rollout([ex.prompt_ids for ex in examples], [c.token_ids for c in completions], "student",
                      sampled_logprobs=[c.logprobs for c in completions])
    if ctx.task is not None:
        rollout.rewards = torch.tensor([
            ctx.task.score(ex.prompt, ctx.tokenizer.decode(c.token_ids, skip_special_tokens=True))
            for ex, c in zip(examples, completions)])
    return rollout


def _teacher_rollout(examples: list[Example], ctx: Context, step: int) -> Rollout:
    s, m = ctx.cfg.sampling, ctx.cfg.method
    samples = ctx.teacher_call("generate", [ex.prompt_ids for ex in examples], num_samples=m.best_of,
                               temperature=s.temperature, top_p=s.top_p,
                               max_new_tokens=s.max_new_tokens, seed=ctx.cfg.train.seed * 100_003 + step)
    chosen = []
    for ex, options in zip(examples, samples):
        best = options[0]
        if ctx.task is not None and len(options) > 1:
            text = lambda smp: ctx.tokenizer.decode(smp.token_ids.tolist(), skip_special_tokens=True)
            best = max(options, key=lambda smp: ctx.task.score(ex.prompt, text(smp)))
        chosen.append(best.token_ids.tolist())
    return Rollout([ex.prompt_ids for ex in examples], chosen, "teacher")


def _interleaved_rollout(examples: list[Example], ctx: Context, step: int) -> Rollout:
    """SKD: the student drafts, the teacher keeps drafts in its top-K and replaces the first miss
    with its own sample; Verify's log-probs come along as the training targets."""
    s, m = ctx.cfg.sampling, ctx.cfg.method
    results = speculative_generate(
        ctx.model, ctx.teacher_call, [ex.prompt_ids for ex in examples], gamma=m.draft_tokens,
        max_new_tokens=s.max_new_tokens, mode="topk", accept_top_k=m.skd_top_k, temperature=s.temperature,
        eos_ids=ctx.eos_ids, pad_id=ctx.pad_id, score_top_k=ctx.cfg.teacher.top_k,
        seed=ctx.cfg.train.seed * 100_003 + step)
    rollout = Rollout([ex.prompt_ids for ex in examples], [r.completion for r in results], "interleaved",
                      teacher_scores=[r.teacher for r in results])
    rollout.acceptance = acceptance(results)["acceptance_rate"]
    return rollout


def make_rollout(examples: list[Example], ctx: Context, step: int) -> Rollout:
    """Completions for this step's examples, as the method prescribes."""
    m = ctx.cfg.method
    if m.name in ("sft", "kd"):
        return _data_rollout(examples, m.name)
    if m.name == "seqkd":
        return _teacher_rollout(examples, ctx, step)
    if m.name == "gkd":
        # one coin per step, the same on every rank: (seed, step) decides, so resumes replay it
        on_policy = random.Random(ctx.cfg.train.seed * 1_000_003 + step).random() < m.student_fraction
        return _student_rollout(examples, ctx) if on_policy else _data_rollout(examples, "gkd")
    if m.name == "rlkd":
        return _student_rollout(examples, ctx)
    if m.name == "skd":
        return _interleaved_rollout(examples, ctx, step)
    raise ValueError(f"unknown method {m.name!r}")


def needs_teacher(cfg: RunConfig) -> bool:
    return cfg.method.name != "sft"


def needs_teacher_scores(cfg: RunConfig) -> bool:
    return cfg.method.name in ("kd", "gkd", "rlkd")


def score_top_k(cfg: RunConfig) -> int:
    # rlkd only reads the sampled token's teacher log-prob: ask for the smallest payload
    return 1 if cfg.method.name == "rlkd" else cfg.teacher.top_k


def compute_loss(cfg: RunConfig, student_logprobs_BSV: torch.Tensor, batch: TokenBatch,
                 teacher: TeacherBatch | None, rollout: Rollout) -> tuple[torch.Tensor, dict]:
    """The method's loss on completion tokens (a scalar) and what to log."""
    m = cfg.method
    token_lp_BS = student_logprobs_BSV.gather(-1, batch.targets_BS[..., None])[..., 0]
    if m.name in ("sft", "seqkd"):
        loss = -D.masked_mean(token_lp_BS, batch.mask_BS, m.reduction)
        return loss, {"nll": loss.item()}
    if m.name in ("kd", "gkd", "skd"):
        # only completion positions are computed ([1, M, ...]), then put back on the grid:
        # nothing is spent on prompt or padding rows, and no stand-in value there can be inf
        rows = batch.mask_BS
        div_M = D.divergence(
            m.divergence, student_logprobs_BSV[rows][None], teacher_topk_ids_BTK=teacher.topk_ids_BSK[rows][None],
            teacher_topk_logprobs_BTK=teacher.topk_logprobs_BSK[rows][None],
            teacher_tail_logprobs_BT=teacher.tail_logprobs_BS[rows][None], beta=m.beta, alpha=m.alpha)[0]
        div_BS = torch.zeros_like(token_lp_BS).masked_scatter(rows, div_M)
        loss = D.masked_mean(div_BS, batch.mask_BS, m.reduction)
        logs = {"divergence": loss.item(), "on_policy": float(rollout.source != "data")}
        if rollout.acceptance is not None:
            logs["acceptance_rate"] = rollout.acceptance
        return loss, logs
    if m.name == "rlkd":
        # per-token advantage: sequence reward (minus the batch mean as a baseline) minus the
        # sampled reverse-KL estimate log q - log p; a constant for the gradient (detached)
        kl_BS = D.sampled_reverse_kl(token_lp_BS.detach(), teacher.token_logprobs_BS)
        advantage_BS = -m.kl_coef * kl_BS
        reward = 0.0
        if m.use_reward and rollout.rewards is not None:
            rewards_B = rollout.rewards.to(token_lp_BS)
            advantage_BS = advantage_BS + (rewards_B - rewards_B.mean())[:, None]
            reward = rewards_B.mean().item()
        loss = -D.masked_mean(advantage_BS * token_lp_BS, batch.mask_BS, m.reduction)
        return loss, {"reverse_kl_estimate": D.masked_mean(kl_BS, batch.mask_BS).item(), "reward": reward}
    raise ValueError(f"unknown method {m.name!r}")

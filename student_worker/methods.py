"""The training methods. A method is a named pair: a completion *source* and a *loss* on the
completion tokens. What it needs from the teacher follows from its two parts.

| method | source: completions from                  | loss                                            |
| ------ | ----------------------------------------- | ----------------------------------------------- |
| sft    | the data set                              | token NLL                                       |
| seqkd  | teacher Generate (best of n by the task)  | token NLL                                       |
| kd     | the data set                              | divergence to the teacher's top-k + tail        |
| gkd    | the student w.p. lambda, else the data set | divergence to the teacher's top-k + tail        |
| skd    | student drafts kept or fixed by Verify     | divergence to the teacher's top-k + tail        |
| rlkd   | the student                               | policy gradient on reward - c * (log q - log p) |

A new method is one row:

    register_method(Method("teacher-rkl", TeacherSamples(), TopKDivergence("reverse_kl")))

Its keys under `method:` in a config are the common ones (config.MethodSettings: name, reduction)
plus the parameter groups its source and loss declare (`parameters`: TeacherSamples has best_of,
TopKDivergence beta and alpha); another method's keys are refused. A method with keys of its own
passes `settings=` a subclass of config.MethodSettings whose `name` is Literal["its-name"].
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from pydantic import create_model

from distill.client.teacher import Teacher
from student_worker import config
from student_worker.config import (
    BestOfParameters, DivergenceChoice, DivergenceParameters, DraftParameters, GkdSettings, KdSettings,
    MethodSettings, MixtureParameters, PolicyGradientParameters, RlkdSettings, SeqkdSettings, SftSettings,
    SkdSettings)
from student_worker.data.prompts import Example
from student_worker.losses import chunked_loss, divergences
from student_worker.rollouts.rollout import Rollout, TeacherBatch, TokenBatch
from student_worker.rollouts.sampling import Completion, sample
from student_worker.rollouts.speculative import speculative_generate
from student_worker.seeding import derive_seed
from student_worker.tasks import Task

if TYPE_CHECKING:
    from student_worker.config import RunConfig
    from student_worker.rollouts.vllm_sampling import VllmSampler


@dataclass
class Context:
    """What producing completions needs besides the examples."""

    cfg: RunConfig
    model: torch.nn.Module          # the student for sampling: no DDP wrapper; FSDP: the sharded model
    tokenizer: object
    eos_ids: list[int]
    pad_id: int
    task: Task | None
    teacher: Teacher | None         # patient with outages; None when the method needs none
    real_vocab: int | None = None   # the tokenizer's size: ids beyond it are embedding padding
    max_context: int | None = None  # the teacher's: prompt + completion must fit

    def new_tokens(self, prompt_ids) -> int:
        """sampling.max_new_tokens, capped so that prompt + completion fit the teacher's context."""
        n = self.cfg.sampling.max_new_tokens
        return n if self.max_context is None else max(1, min(n, self.max_context - len(prompt_ids)))
    sampler: VllmSampler | None = None  # sampling.engine=vllm: this rank's engine; None: hf

    def text(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @property
    def needs_rewards(self) -> bool:
        """Whether samples need the task's check as a reward (a decode and a check per sample,
        worth skipping when the loss never reads it)."""
        return self.task is not None and METHODS[self.cfg.method.name].loss.needs_rewards

    def sample_student(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """The student's completions by the configured engine (sampling.engine)."""
        s = self.cfg.sampling
        options = dict(max_new_tokens=max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                       eos_ids=self.eos_ids)
        if self.sampler is None:
            return sample(self.model, prompts, pad_id=self.pad_id, real_vocab=self.real_vocab, **options)
        # vLLM seeds its own generators: the seed is drawn from torch's, which the trainer
        # seeds per (seed, step, rank), so a resume replays the same samples
        return self.sampler.sample(prompts, seed=int(torch.randint(1 << 30, ())), real_vocab=self.real_vocab,
                                   **options)


# ---- completion sources: examples -> Rollout ----------------------------------------------------

class Source(Protocol):
    calls_teacher: bool             # Generate or Verify
    needs_full_distributions: bool  # the student's whole next-token distributions (skd's drafts),
                                    # which only the hf engine returns
    completions_from_data: bool     # every completion is the data's (a score cache's scores apply)
    parameters: tuple[type, ...]    # its config keys under method: (groups in student_worker.config)

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout: ...


class DataCompletions:
    calls_teacher = False
    needs_full_distributions = False
    completions_from_data = True
    parameters = ()

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout:
        missing = [i for i, ex in enumerate(examples) if ex.completion_ids is None]
        if missing:
            raise ValueError(f"method {ctx.cfg.method.name!r} trains on data completions, but examples "
                             f"{missing} have none (add a 'completion' field or pick gkd/rlkd)")
        cached = [ex.teacher_scores for ex in examples]   # a distill-score cache: no Score call
        return Rollout([ex.prompt_ids for ex in examples], [ex.completion_ids for ex in examples], "data",
                       teacher_scores=cached if all(s is not None for s in cached) else None)


class StudentSamples:
    """The student's own samples (on-policy), with the task's check as reward when the loss reads it."""

    calls_teacher = False
    needs_full_distributions = False
    completions_from_data = False
    parameters = ()

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout:
        caps = [ctx.new_tokens(ex.prompt_ids) for ex in examples]
        completions = ctx.sample_student([ex.prompt_ids for ex in examples], max(caps))
        completions = [c if len(c.token_ids) <= cap else
                       Completion(c.token_ids[:cap], c.logprobs[:cap], False) for c, cap in zip(completions, caps)]
        rollout = Rollout([ex.prompt_ids for ex in examples], [c.token_ids for c in completions], "student",
                          sampled_logprobs=[c.logprobs for c in completions],
                          sampler_weights_step=ctx.sampler.weights_step if ctx.sampler else None)
        if ctx.needs_rewards:
            rollout.rewards = torch.tensor([ctx.task.check(ex.prompt, ctx.text(c.token_ids))
                                            for ex, c in zip(examples, completions)])
        return rollout


class TeacherSamples:
    """Teacher Generate, method.best_of samples per prompt; the task's check picks the kept one."""

    calls_teacher = True
    needs_full_distributions = False
    completions_from_data = False
    parameters = (BestOfParameters,)

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout:
        s, m = ctx.cfg.sampling, ctx.cfg.method
        # one call per length cap (prompts near the teacher's context get fewer new tokens)
        by_cap: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            by_cap.setdefault(ctx.new_tokens(ex.prompt_ids), []).append(i)
        samples = [None] * len(examples)
        for cap, index in by_cap.items():
            answers = ctx.teacher.generate(
                [examples[i].prompt_ids for i in index], num_samples=m.best_of, temperature=s.temperature,
                top_p=s.top_p, max_new_tokens=cap,
                seed=derive_seed(ctx.cfg.train.seed, "generate", step, *([cap] if len(by_cap) > 1 else [])))
            for i, options in zip(index, answers):
                samples[i] = options
        chosen = []
        for ex, options in zip(examples, samples):
            best = options[0]
            if ctx.task is not None and len(options) > 1:
                best = max(options, key=lambda smp: ctx.task.check(ex.prompt, ctx.text(smp.token_ids.tolist())))
            chosen.append(best.token_ids.tolist())
        return Rollout([ex.prompt_ids for ex in examples], chosen, "teacher")


class InterleavedDrafts:
    """SKD: the student drafts, the teacher keeps drafts in its top-K and replaces the first miss
    with its own sample; Verify's log-probs come along as the training targets."""

    calls_teacher = True
    needs_full_distributions = True   # drafts need q's full distribution (return_probs)
    completions_from_data = False
    parameters = (DraftParameters,)

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout:
        s, m = ctx.cfg.sampling, ctx.cfg.method
        results = speculative_generate(
            ctx.model, ctx.teacher, [ex.prompt_ids for ex in examples], gamma=m.draft_tokens,
            max_new_tokens=s.max_new_tokens, mode="topk", accept_top_k=m.skd_top_k, temperature=s.temperature,
            eos_ids=ctx.eos_ids, pad_id=ctx.pad_id, score_top_k=ctx.cfg.scoring.top_k,
            seed=derive_seed(ctx.cfg.train.seed, "interleave", step))
        rollout = Rollout([ex.prompt_ids for ex in examples], [r.completion for r in results], "interleaved",
                          teacher_scores=[r.teacher for r in results])
        rollout.drafts = (sum(r.accepted for r in results), sum(r.drafted for r in results))
        return rollout


@dataclass(frozen=True)
class Mixture:
    """`first` with probability lambda (method.student_fraction), else `second`. One coin per step,
    the same on every rank: (seed, step) decides, so resumes replay it."""

    first: Source
    second: Source

    @property
    def calls_teacher(self) -> bool:
        return self.first.calls_teacher or self.second.calls_teacher

    @property
    def needs_full_distributions(self) -> bool:
        return self.first.needs_full_distributions or self.second.needs_full_distributions

    @property
    def completions_from_data(self) -> bool:
        return self.first.completions_from_data and self.second.completions_from_data

    @property
    def parameters(self) -> tuple[type, ...]:
        return tuple(dict.fromkeys((MixtureParameters, *self.first.parameters, *self.second.parameters)))

    def rollout(self, examples: list[Example], ctx: Context, step: int) -> Rollout:
        coin = random.Random(derive_seed(ctx.cfg.train.seed, "mixture", step)).random()
        chosen = self.first if coin < ctx.cfg.method.student_fraction else self.second
        return chosen.rollout(examples, ctx, step)


# ---- losses: a per-token function on completion tokens and the teacher inputs it reads --------
#
# chunked_loss.chunked_loss computes Σ_m w_m · l(log q_m, target_m, inputs_m) over the batch's
# completion positions m, a chunk of positions at a time; a loss row says which l and which
# per-position inputs (gathered once per batch, [M, ...]), and what to log.

class Loss(Protocol):
    needs_scores: bool              # the teacher's log-probs on the completions (Score, or Verify's)
    needs_rewards: bool             # the task's reward of each sample (rollout.rewards)
    parameters: tuple[type, ...]    # its config keys under method: (groups in student_worker.config)

    def top_k(self, cfg: RunConfig) -> int:
        """k of the teacher's answers this loss reads."""

    def per_token(self, m: MethodSettings) -> chunked_loss.TokenLoss:
        """l(logprobs_NV, targets_N, **inputs_N) -> [N]."""

    def inputs(self, m: MethodSettings, batch: TokenBatch, teacher: TeacherBatch | None,
               rollout: Rollout) -> dict[str, torch.Tensor]:
        """l's extra inputs at the completion positions (batch.mask_BS order): [M, ...]."""

    def logs(self, m: MethodSettings, loss: float, token_logprobs_M: torch.Tensor,
             inputs: dict[str, torch.Tensor], rollout: Rollout) -> dict:
        """What to log, from the loss and the student's log-probs of the targets [M]."""


class TokenNLL:
    needs_scores = False
    needs_rewards = False
    parameters = ()

    def top_k(self, cfg: RunConfig) -> int:
        return 0

    def per_token(self, m):
        return chunked_loss.nll

    def inputs(self, m, batch, teacher, rollout):
        return {}

    def logs(self, m, loss, token_logprobs_M, inputs, rollout):
        return {"nll": loss}


@dataclass(frozen=True)
class TopKDivergence:
    """A divergence (a name in divergences.DIVERGENCES) to the teacher's top-k + tail; None: the
    one method.divergence names."""

    name: str | None = None
    needs_scores = True
    needs_rewards = False

    @property
    def parameters(self) -> tuple[type, ...]:
        return (DivergenceParameters,) if self.name else (DivergenceParameters, DivergenceChoice)

    def top_k(self, cfg: RunConfig) -> int:
        return cfg.scoring.top_k

    def per_token(self, m):
        return chunked_loss.topk_divergence(self.name or m.divergence, beta=m.beta, alpha=m.alpha)

    def inputs(self, m, batch, teacher, rollout):
        # only completion positions are gathered: nothing is spent on prompt or padding rows
        return chunked_loss.topk_extras(teacher, batch.mask_BS)

    def logs(self, m, loss, token_logprobs_M, inputs, rollout):
        return {"divergence": loss, "on_policy": float(rollout.source != "data")}


class PolicyGradient:
    """REINFORCE on the task's reward (method.use_reward) minus method.kl_coef times the sampled
    reverse KL to the teacher, per token (chunked_loss.policy_gradient)."""

    needs_scores = True
    needs_rewards = True
    parameters = (PolicyGradientParameters,)

    def top_k(self, cfg: RunConfig) -> int:
        return 1   # only the sampled token's teacher log-prob is read: the smallest payload

    def per_token(self, m):
        return chunked_loss.policy_gradient(m.kl_coef)

    def inputs(self, m, batch, teacher, rollout):
        rewards_B = rollout.rewards if m.use_reward else None
        return chunked_loss.policy_gradient_extras(teacher, batch.mask_BS, rewards_B)

    def logs(self, m, loss, token_logprobs_M, inputs, rollout):
        kl_M = divergences.sampled_reverse_kl(token_logprobs_M.double(), inputs["teacher_token_logprobs_N"].double())
        rewarded = m.use_reward and rollout.rewards is not None
        return {"reverse_kl_estimate": kl_M.mean().item() if kl_M.numel() else 0.0,
                "reward": rollout.rewards.float().mean().item() if rewarded else 0.0}


# ---- methods: named (source, loss) rows --------------------------------------------------------

@dataclass(frozen=True)
class Method:
    name: str
    source: Source
    loss: Loss
    settings: type[MethodSettings] | None = None   # None: composed from the source's and loss's parameters

    def settings_model(self) -> type[MethodSettings]:
        """The model that validates this method's `method:` section."""
        if self.settings is not None:
            return self.settings
        groups = dict.fromkeys((*self.loss.parameters, *self.source.parameters))
        return create_model(f"MethodSettings[{self.name}]", __base__=(*groups, MethodSettings),
                            name=(Literal[self.name], self.name))

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_needed(scores_cached=False)

    def teacher_needed(self, scores_cached: bool) -> bool:
        """Whether a run calls the teacher. scores_cached: the data brings its completions'
        scores (a distill-score cache), which serve a source whose completions are all the data's."""
        from_cache = scores_cached and self.source.completions_from_data
        return self.source.calls_teacher or (self.loss.needs_scores and not from_cache)

    def needs_scores(self, rollout: Rollout) -> bool:
        """Whether this rollout still needs a Score call (interleaved drafts and cached data bring
        their own)."""
        return self.loss.needs_scores and rollout.teacher_scores is None

    def score_top_k(self, cfg: RunConfig) -> int:
        return self.loss.top_k(cfg)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method.name` a valid method.name in configs, with its settings' keys."""
    METHODS[method.name] = method
    config.register_settings(method.name, method.settings_model())
    return method


for _method in (   # the config module holds the built-in methods' settings (it imports no registry)
    Method("sft", DataCompletions(), TokenNLL(), SftSettings),
    Method("seqkd", TeacherSamples(), TokenNLL(), SeqkdSettings),
    Method("kd", DataCompletions(), TopKDivergence(), KdSettings),
    Method("gkd", Mixture(StudentSamples(), DataCompletions()), TopKDivergence(), GkdSettings),
    Method("skd", InterleavedDrafts(), TopKDivergence(), SkdSettings),
    Method("rlkd", StudentSamples(), PolicyGradient(), RlkdSettings),
):
    register_method(_method)


def check_names(cfg: RunConfig) -> None:
    """method.divergence names a registered divergence, or a ValueError that lists them. Checked
    when a run starts and by the command line, not by the config module, which imports no registry
    (loading a config loads no model stack); the config checks method.name itself."""
    if isinstance(cfg.method, DivergenceChoice) and cfg.method.divergence not in divergences.DIVERGENCES:
        choices = ", ".join(map(repr, sorted(divergences.DIVERGENCES)))
        raise ValueError(f"method.divergence: Input should be one of {choices} "
                         f"(got {cfg.method.divergence!r}; student_worker/losses/divergences.py holds them)")


def get_method(cfg: RunConfig) -> Method:
    check_names(cfg)
    return METHODS[cfg.method.name]

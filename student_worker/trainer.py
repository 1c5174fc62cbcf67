"""The training loop: prompts -> completions -> teacher log-probs -> loss -> step.

One process is one worker; `torchrun --nproc-per-node N` makes N workers of one job
(DistributedDataParallel: gloo on CPU, NCCL on GPU). Each rank trains on different prompts;
gradients are averaged, so weights stay identical; only rank 0 writes files.

Overlap: with train.lag = L > 0, the teacher scores the next L batches while the student
updates on the current one (those batches were sampled up to L updates ago). L = 0 is strictly
on-policy: sample, score, update.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker import checkpoint
from student_worker.config import RunConfig
from student_worker.data import PromptData
from student_worker.evaluate import evaluate
from student_worker.methods import Context, Method, get_method
from student_worker.rollout import Rollout, teacher_batch, to_device, token_batch
from student_worker.sampler_mismatch import compare_with_sampler
from student_worker.seeding import derive_seed
from student_worker.speculative import acceptance, speculative_generate
from student_worker.teacher import PatientTeacher, TeacherUnreachable, check_tokenizer
from student_worker.teacher_client import TeacherClient
from student_worker.tokens import pad_id_of


def _init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def _lr_lambda(cfg: RunConfig):
    o, steps = cfg.optim, cfg.train.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, steps - o.warmup_steps)
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if o.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


class _MetricsLog:
    """DIR/metrics.jsonl (+ TensorBoard); on resume, lines past the checkpoint are dropped."""

    def __init__(self, output_dir: Path, start_step: int, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        kept = []
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise SystemExit("train.tensorboard=true needs the tensorboard package "
                                 "(pip install tensorboard)") from exc
            self.writer = SummaryWriter(output_dir / "tensorboard")

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])


@dataclass
class Run:
    """What a training run holds, built once by `setup`."""

    cfg: RunConfig
    output_dir: Path
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    model: torch.nn.Module          # the student itself (sampling, saving)
    ddp_model: torch.nn.Module      # the same, wrapped in DDP when world > 1 (training)
    method: Method
    teacher: PatientTeacher | None
    info: object | None             # the teacher's Info
    data: PromptData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ctx: Context
    step: int                       # steps done (restored on resume)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: RunConfig, output_dir: str | Path, resume: bool = False) -> Run:
    """Distributed init, student (or its latest checkpoint), teacher checks, data, optimizer."""
    rank, world, device = _init_distributed()
    if cfg.student.num_threads:
        torch.set_num_threads(cfg.student.num_threads)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.student.path)
    ckpt = checkpoint.latest_checkpoint(output_dir) if resume else None
    model = _load_student(cfg, ckpt, device)
    method = get_method(cfg)
    teacher, info = _connect_teacher(cfg, method, tokenizer, model, announce=rank == 0)
    data = PromptData(cfg.data, tokenizer, rank, world, cfg.train.seed)
    if cfg.train.eval_every and data.task is None:
        raise SystemExit("train.eval_every needs a built-in task as data.source (its check)")
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    step = checkpoint.load_state(ckpt, optimizer, scheduler) if ckpt else 0
    ddp_model = DistributedDataParallel(model) if world > 1 else model
    model.train()
    eos_ids = (list(info.special_tokens.eos_ids) if info else []) or [tokenizer.eos_token_id]
    ctx = Context(cfg, model, tokenizer, eos_ids, pad_id_of(tokenizer, eos_ids), data.task, teacher)
    if cfg.sampling.engine == "vllm":
        ctx.sampler = _start_vllm_sampler(cfg, method, ckpt, model, device, world, step)
    return Run(cfg, output_dir, rank, world, device, tokenizer, model, ddp_model, method, teacher, info,
               data, optimizer, scheduler, ctx, step)


@dataclass
class Timing:
    rollout_s: float        # producing completions (student sampling, teacher Generate/Verify)
    latency_s: float        # the teacher's Score call, start to answer
    wait_s: float           # how long the loop blocked on it (latency not hidden by overlap)


def rollouts(run: Run) -> Iterator[tuple[Rollout, list | None, Timing]]:
    """Batches with their teacher scores, steps run.step .. cfg.train.steps - 1.

    lag + 1 batches are kept in flight: each is sampled now and scored by the teacher on a
    background thread, so with lag > 0 scoring overlaps the updates of earlier batches.
    """
    cfg, method = run.cfg, run.method

    def score(rollout):
        start = time.monotonic()
        scores = run.teacher.score(rollout.sequences, rollout.prompt_lens, top_k=method.score_top_k(cfg),
                                   dtype=cfg.teacher.logprob_dtype)
        return scores, time.monotonic() - start

    pool = ThreadPoolExecutor(1, thread_name_prefix="teacher")
    pipeline: collections.deque = collections.deque()
    next_step = run.step
    try:
        while next_step < cfg.train.steps or pipeline:
            start = time.monotonic()
            while len(pipeline) <= cfg.train.lag and next_step < cfg.train.steps:
                # sampling at a step depends only on (seed, step, rank): resumes replay it exactly
                torch.manual_seed(derive_seed(cfg.train.seed, "sample", next_step, run.rank))
                rollout = method.source.rollout(run.data.batch(next_step), run.ctx, next_step)
                pending = pool.submit(score, rollout) if method.needs_scores(rollout) else None
                pipeline.append((rollout, pending))
                next_step += 1
            rollout, pending = pipeline.popleft()
            waiting = time.monotonic()
            scores, latency = pending.result() if pending else (rollout.teacher_scores, 0.0)
            yield rollout, scores, Timing(waiting - start, latency, time.monotonic() - waiting)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def update(run: Run, rollout: Rollout, scores) -> tuple[torch.Tensor, dict]:
    """One optimizer step on the method's loss over the rollout's completion tokens."""
    batch = to_device(token_batch(rollout, run.ctx.pad_id), run.device)
    logits_BSV = run.ddp_model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
    student_logprobs_BSV = torch.log_softmax(logits_BSV.float(), -1)
    teacher = (to_device(teacher_batch(scores, rollout, batch.targets_BS.shape[1]), run.device)
               if scores else None)
    sampler_logs = compare_with_sampler(rollout, batch, logits_BSV, run.cfg.sampling, run.step)
    loss, logs = run.method.loss(run.cfg.method, student_logprobs_BSV, batch, teacher, rollout)
    logs.update(sampler_logs)
    if rollout.acceptance is not None:
        logs["acceptance_rate"] = rollout.acceptance
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = run.cfg.optim.grad_clip
    logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip).item() if clip else None
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return loss.detach(), logs


def evaluate_run(run: Run) -> dict:
    """Task accuracy on cfg.train.eval_split and, with a Verify-capable teacher, DistillSpec's
    acceptance rate of the student's drafts. Seeded: every rank draws the same samples."""
    cfg, split = run.cfg, run.cfg.train.eval_split
    acc = evaluate(run.model, run.tokenizer, run.data.task, split, cfg.train.eval_prompts,
                   max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.train.seed)
    out = {f"{split}_greedy": acc.greedy, f"{split}_sampled": acc.sampled, f"{split}_diversity": acc.diversity}
    n = cfg.train.eval_acceptance_prompts
    if n and run.teacher is not None and run.info.features.verify:
        prompts = [run.tokenizer(e["prompt"]).input_ids for e in run.data.task.examples(split, n)]
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            results = speculative_generate(
                run.model, run.teacher, prompts, gamma=cfg.method.draft_tokens,
                max_new_tokens=cfg.sampling.max_new_tokens, mode="speculative", eos_ids=run.ctx.eos_ids,
                pad_id=run.ctx.pad_id, score_top_k=1, seed=cfg.train.seed)
        out[f"{split}_acceptance"] = acceptance(results)["acceptance_rate"]
    return out


def train(cfg: RunConfig, output_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run cfg.train.steps steps (from the latest checkpoint when resume); return the final
    checkpoint folder. progress=False hides the bar (for a caller that shows its own)."""
    run = setup(cfg, output_dir, resume)
    t = cfg.train
    log = _MetricsLog(run.output_dir, run.step, t.tensorboard) if run.is_main else None
    if t.eval_every and run.step == 0 and run.is_main:
        log.write({"step": 0, **evaluate_run(run)})
    bar = tqdm(total=t.steps, initial=run.step, desc=cfg.method.name, dynamic_ncols=True,
               disable=not (run.is_main and progress))
    started, first_step = time.monotonic(), run.step
    teacher_time = teacher_wait = 0.0
    try:
        for rollout, scores, timing in rollouts(run):
            update_start = time.monotonic()
            with _sampler_updating(run):
                loss, logs = update(run, rollout, scores)
            teacher_time += timing.latency_s
            teacher_wait += min(timing.wait_s, timing.latency_s)
            # loss, completion tokens and samples summed over ranks
            stats = torch.tensor([loss.item(), rollout.num_completion_tokens, len(rollout.prompt_ids)],
                                 dtype=torch.float64)
            if run.world > 1:
                dist.all_reduce(stats)
            evaluated = evaluate_run(run) if t.eval_every and run.step % t.eval_every == 0 else {}
            if run.is_main:
                now = time.monotonic()
                step_s = timing.rollout_s + timing.wait_s + now - update_start
                log.write({"step": run.step, "loss": stats[0].item() / run.world, **logs,
                           "lr": run.scheduler.get_last_lr()[0], "samples": int(stats[2]),
                           "completion_tokens": int(stats[1]), "tokens_per_s": stats[1].item() / step_s,
                           "rollout_s": timing.rollout_s, "update_s": now - update_start,
                           "teacher_latency_s": timing.latency_s, "teacher_wait_s": timing.wait_s,
                           "hidden_fraction": 1 - teacher_wait / teacher_time if teacher_time else None,
                           "source": rollout.source, "elapsed_s": now - started, **evaluated})
                bar.set_postfix(loss=f"{stats[0].item() / run.world:.4f}")
                bar.update(1)
            reached = bool(t.stop_at_accuracy and evaluated
                           and evaluated[f"{t.eval_split}_sampled"] >= t.stop_at_accuracy)
            preempted = bool(t.stop_after and run.step - first_step >= t.stop_after)
            if run.step == t.steps or reached or preempted or (t.save_every and run.step % t.save_every == 0):
                _save(run)
            if reached or preempted:
                break
    except TeacherUnreachable as exc:
        _save(run)
        raise SystemExit(f"stopping: {exc}. Checkpoint at step {run.step} in {run.output_dir}; "
                         "continue with --resume once the teacher is back.") from exc
    finally:
        bar.close()
        if run.teacher is not None:
            run.teacher.client.close()
        if run.ctx.sampler is not None:
            run.ctx.sampler.close()
    if run.is_main and progress and teacher_time:
        print(f"teacher time hidden by overlap: {1 - teacher_wait / teacher_time:.0%} "
              f"({teacher_wait:.1f} s waited of {teacher_time:.1f} s)")
    return checkpoint.checkpoint_dir(run.output_dir, run.step)


def _load_student(cfg: RunConfig, ckpt: Path | None, device: torch.device):
    dtype = getattr(torch, cfg.student.dtype)
    if ckpt is None and cfg.student.init == "config":
        from transformers import AutoConfig

        torch.manual_seed(cfg.train.seed)   # the random init is the seed's
        config = AutoConfig.from_pretrained(cfg.student.path)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    return AutoModelForCausalLM.from_pretrained(ckpt or cfg.student.path, dtype=dtype).to(device)


def _start_vllm_sampler(cfg: RunConfig, method: Method, ckpt: Path | None, model, device, world, step):
    if getattr(method.source, "hf_engine_only", False):
        raise SystemExit(f"method {cfg.method.name!r} drafts with the student's full distributions, "
                         "which the vllm engine does not return: use sampling.engine=hf")
    from student_worker.vllm_sampling import start_sampler   # vLLM only when asked for

    return start_sampler(cfg, str(ckpt or cfg.student.path), model, device, world, step)


def _sampler_updating(run: Run):
    """The vllm engine asleep during the update and synced after it (every sampling.sync_every)."""
    sampler = run.ctx.sampler
    if sampler is None:
        return contextlib.nullcontext()
    return sampler.updating(run.model, run.step + 1, run.cfg.sampling.sync_every)


def _connect_teacher(cfg: RunConfig, method: Method, tokenizer, model, announce: bool):
    """The patient teacher client and its Info, after checking the student can train against it.
    (None, None) for a method that needs no teacher and has none configured. announce: print
    the retry messages of a teacher outage (one rank does)."""
    if cfg.teacher is None:
        if method.needs_teacher:
            raise SystemExit(f"method {cfg.method.name!r} needs a teacher: set teacher.target")
        return None, None
    t = cfg.teacher
    client = TeacherClient(t.target, timeout=t.timeout_s, api_key=t.api_key, tls=t.tls,
                           tls_ca=t.tls_ca, tls_cert=t.tls_cert, tls_key=t.tls_key)
    teacher = PatientTeacher(client, t.patience_s, announce=announce)
    try:
        info = teacher.info()
    except TeacherUnreachable as exc:
        raise SystemExit(f"cannot start: {exc}") from exc
    check_tokenizer(info, tokenizer, cfg.student.path)
    student_vocab = model.get_output_embeddings().out_features
    if info.vocab_size > student_vocab:
        raise SystemExit(f"the teacher scores {info.vocab_size} token ids but the student "
                         f"{cfg.student.path!r} has only {student_vocab} outputs; resize the "
                         "student's embeddings (model.resize_token_embeddings) to at least the teacher's")
    if cfg.teacher.top_k > info.max_top_k:
        raise SystemExit(f"teacher.top_k={cfg.teacher.top_k} exceeds the teacher's max_top_k={info.max_top_k}")
    return teacher, info


def _save(run: Run) -> None:
    digests = [checkpoint.weights_digest(run.model)]
    if run.world > 1:
        # DDP keeps replicas identical by construction; a checkpoint proves it
        gathered = [None] * run.world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights at step {run.step}: {digests}")
    if run.is_main:
        checkpoint.save(run.output_dir, run.step, run.model, run.tokenizer, run.optimizer, run.scheduler,
                        rank_digests=digests)
    if run.world > 1:
        dist.barrier()

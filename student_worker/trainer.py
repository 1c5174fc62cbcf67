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
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker import checkpoint
from student_worker.config import RunConfig
from student_worker.data import PromptData
from student_worker.evaluate import evaluate
from student_worker.methods import (Context, compute_loss, make_rollout, needs_teacher,
                                    needs_teacher_scores, score_top_k)
from student_worker.rollout import teacher_batch, to_device, token_batch
from student_worker.speculative import acceptance, speculative_generate
from student_worker.teacher import PatientTeacher, TeacherUnreachable, check_tokenizer
from student_worker.teacher_client import TeacherClient


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


def _step_seed(seed: int, step: int, rank: int) -> int:
    # sampling at a step depends only on (seed, step, rank): resumed runs replay it exactly
    return (seed * 1_000_003 + step) * 1_009 + rank


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


def train(cfg: RunConfig, output_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run cfg.train.steps steps (from the latest checkpoint when resume); return the final
    checkpoint folder. progress=False hides the bar (for a caller that shows its own)."""
    rank, world, device = _init_distributed()
    is_main = rank == 0
    if cfg.student.num_threads:
        torch.set_num_threads(cfg.student.num_threads)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(cfg.student.path)
    ckpt = checkpoint.latest_checkpoint(output_dir) if resume else None
    model = _load_student(cfg, ckpt, device)
    teacher, info = _connect_teacher(cfg, tokenizer, model)

    data = PromptData(cfg.data, tokenizer, rank, world, cfg.train.seed)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    step = checkpoint.load_state(ckpt, optimizer, scheduler) if ckpt else 0
    ddp_model = DistributedDataParallel(model) if world > 1 else model
    model.train()

    eos_ids = (list(info.special_tokens.eos_ids) if info else []) or [tokenizer.eos_token_id]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    ctx = Context(cfg, model, tokenizer, eos_ids, pad_id, data.task, teacher)
    wants_scores = needs_teacher_scores(cfg)
    top_k = score_top_k(cfg) if wants_scores else 0

    def score(rollout):
        start = time.monotonic()
        scores = teacher("score", rollout.sequences, rollout.prompt_lens, top_k=top_k,
                         dtype=cfg.teacher.logprob_dtype)
        return scores, time.monotonic() - start

    log = _MetricsLog(output_dir, step, cfg.train.tensorboard) if is_main else None
    if cfg.train.eval_every and data.task is None:
        raise SystemExit("train.eval_every needs a built-in task as data.source (its scorer)")

    def evaluate_now() -> dict:
        acc = evaluate(model, tokenizer, data.task, cfg.train.eval_split, cfg.train.eval_prompts,
                       max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.train.seed)
        split = cfg.train.eval_split
        out = {f"{split}_greedy": acc.greedy, f"{split}_sampled": acc.sampled,
               f"{split}_diversity": acc.diversity}
        n = cfg.train.eval_acceptance_prompts
        if n and teacher is not None and info.features.verify:
            # DistillSpec's measure: does distillation make the student a better draft model?
            prompts = [tokenizer(e["prompt"]).input_ids for e in data.task.examples(split, n)]
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(cfg.train.seed)
                results = speculative_generate(
                    model, teacher, prompts, gamma=cfg.method.draft_tokens,
                    max_new_tokens=cfg.sampling.max_new_tokens, mode="speculative", eos_ids=eos_ids,
                    pad_id=pad_id, score_top_k=1, seed=cfg.train.seed)
            out[f"{split}_acceptance"] = acceptance(results)["acceptance_rate"]
        return out

    if cfg.train.eval_every and step == 0 and is_main:
        log.write({"step": 0, **evaluate_now()})
    bar = tqdm(total=cfg.train.steps, initial=step, desc=f"{cfg.method.name}", disable=not (is_main and progress),
               dynamic_ncols=True)
    pool = ThreadPoolExecutor(1, thread_name_prefix="teacher")
    pipeline: collections.deque = collections.deque()
    next_step, run_steps = step, 0
    teacher_time = teacher_wait = 0.0
    started = time.monotonic()
    try:
        while step < cfg.train.steps:
            # keep lag + 1 batches in flight: sampled now, scored by the teacher in the background
            step_start = time.monotonic()
            while len(pipeline) <= cfg.train.lag and next_step < cfg.train.steps:
                torch.manual_seed(_step_seed(cfg.train.seed, next_step, rank))
                rollout = make_rollout(data.batch(next_step), ctx, next_step)
                pipeline.append((rollout, pool.submit(score, rollout) if wants_scores else None))
                next_step += 1
            rollout, pending = pipeline.popleft()
            wait_start = time.monotonic()
            scores, latency = pending.result() if pending else (rollout.teacher_scores, 0.0)
            update_start = time.monotonic()
            waited = update_start - wait_start
            teacher_time, teacher_wait = teacher_time + latency, teacher_wait + min(waited, latency)

            batch = to_device(token_batch(rollout, pad_id), device)
            logits_BSV = ddp_model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
            student_logprobs_BSV = torch.log_softmax(logits_BSV.float(), -1)
            teacher_b = (to_device(teacher_batch(scores, rollout, batch.targets_BS.shape[1]), device)
                         if scores else None)
            loss, logs = compute_loss(cfg, student_logprobs_BSV, batch, teacher_b, rollout)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip).item()
                         if o.grad_clip else float("nan"))
            optimizer.step()
            scheduler.step()
            step += 1
            run_steps += 1

            record = {}
            stats = torch.tensor([loss.item(), rollout.num_completion_tokens, len(rollout.prompt_ids)],
                                 dtype=torch.float64)
            if world > 1:
                dist.all_reduce(stats)
            if is_main:
                now = time.monotonic()
                record = {"step": step, "loss": stats[0].item() / world, **logs,
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "samples": int(stats[2]), "completion_tokens": int(stats[1]),
                          "tokens_per_s": stats[1].item() / max(now - step_start, 1e-9),
                          "rollout_s": wait_start - step_start, "update_s": now - update_start,
                          "teacher_latency_s": latency, "teacher_wait_s": waited,
                          "hidden_fraction": 1 - teacher_wait / teacher_time if teacher_time else None,
                          "source": rollout.source, "elapsed_s": time.monotonic() - started}
            evaluated = {}
            if cfg.train.eval_every and step % cfg.train.eval_every == 0:
                evaluated = evaluate_now()   # every rank: the same seeded draws, the same decision
            if is_main:
                record.update(evaluated)
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                bar.update(1)
            target = cfg.train.stop_at_accuracy
            reached = bool(target and evaluated and evaluated[f"{cfg.train.eval_split}_sampled"] >= target)
            stopping = reached or (cfg.train.stop_after and run_steps >= cfg.train.stop_after)
            if step == cfg.train.steps or stopping or (cfg.train.save_every and step % cfg.train.save_every == 0):
                _save(output_dir, step, model, tokenizer, optimizer, scheduler, is_main, world)
            if stopping:
                break
    except TeacherUnreachable as exc:
        _save(output_dir, step, model, tokenizer, optimizer, scheduler, is_main, world)
        raise SystemExit(f"stopping: {exc}. Checkpoint at step {step} in {output_dir}; "
                         "continue with --resume once the teacher is back.") from exc
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
    if is_main and progress and teacher_time:
        print(f"teacher time hidden by overlap: {1 - teacher_wait / teacher_time:.0%} "
              f"({teacher_wait:.1f} s waited of {teacher_time:.1f} s)")
    return checkpoint.checkpoint_dir(output_dir, step)


def _load_student(cfg: RunConfig, ckpt: Path | None, device: torch.device):
    dtype = getattr(torch, cfg.student.dtype)
    if ckpt is None and cfg.student.init == "config":
        from transformers import AutoConfig

        torch.manual_seed(cfg.train.seed)   # the random init is the seed's
        config = AutoConfig.from_pretrained(cfg.student.path)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    return AutoModelForCausalLM.from_pretrained(ckpt or cfg.student.path, dtype=dtype).to(device)


def _connect_teacher(cfg: RunConfig, tokenizer, model):
    """The patient teacher client and its Info, after checking the student can train against it.
    (None, None) for a method that needs no teacher and has none configured."""
    if cfg.teacher is None:
        if needs_teacher(cfg):
            raise SystemExit(f"method {cfg.method.name!r} needs a teacher: set teacher.target")
        return None, None
    teacher = PatientTeacher(TeacherClient(cfg.teacher.target, timeout=cfg.teacher.timeout_s,
                                           api_key=cfg.teacher.api_key), cfg.teacher.patience_s)
    try:
        info = teacher("info")
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


def _save(output_dir, step, model, tokenizer, optimizer, scheduler, is_main, world) -> None:
    digests = [checkpoint.weights_digest(model)]
    if world > 1:
        # DDP keeps replicas identical by construction; a checkpoint proves it
        gathered = [None] * world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights at step {step}: {digests}")
    if is_main:
        checkpoint.save(output_dir, step, model, tokenizer, optimizer, scheduler, rank_digests=digests)
    if world > 1:
        dist.barrier()

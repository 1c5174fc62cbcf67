"""The training loop: prompts -> completions -> teacher log-probs -> loss -> step.

One process is one worker; `torchrun --nproc-per-node N` makes N workers of one job
(DistributedDataParallel, or FSDP2 with train.parallel=fsdp; a cpu:gloo,cuda:nccl group on GPUs,
gloo on CPU). Each rank trains on different prompts; gradients are averaged, so weights stay
identical; rank 0 writes files (FSDP: every rank its shard too), into a folder every rank must
see (a shared file system across nodes). A teacher failure on any rank stops every rank at the
same step (_agreed). The loss goes through
chunked_loss over micro-batches (micro_batches.accumulate_gradients); the student's options
(LoRA, activation checkpointing) come from parallel.prepare_student.

Overlap: with train.lag = L > 0, the teacher scores the next L batches while the student
updates on the current one (those batches were sampled up to L updates ago). L = 0 is strictly
on-policy: sample, score, update.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.client.teacher import PatientTeacher, TeacherUnreachable, check_tokenizer
from distill.client.teacher_client import TeacherClient
from distill.results import TeacherScores
from student_worker.config import RunConfig
from student_worker.data.cache import CacheData, CacheError, cache_kind
from student_worker.data.prompts import PromptData
from student_worker.distributed import every_rank, init_distributed, is_node_leader, ranks_per_node
from student_worker.losses.chunked_loss import completion_counts, reduction_weights
from student_worker.methods import Context, InterleavedDrafts, Method, get_method
from student_worker.rollouts.rollout import Rollout, teacher_batch, to_device, token_batch
from student_worker.rollouts.sampler_mismatch import compare_with_sampler, trainer_token_logprobs
from student_worker.rollouts.speculative import acceptance, speculative_generate
from student_worker.rollouts.tokens import eos_ids_of, pad_id_of
from student_worker.rollouts.vocab import RealVocabHead
from student_worker.seeding import derive_seed
from student_worker.train import checkpoint, run_record
from student_worker.train.evaluate import evaluate
from student_worker.train.micro_batches import accumulate_gradients
from student_worker.train.parallel import (export_hf, full_weights, load_sharded, precision, prepare_student,
                                           save_sharded, wrap_for_training)
from student_worker.train.tracking import Trackers

logger = logging.getLogger(__name__)


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
    """DIR/metrics.jsonl (+ the trackers of train.report_to); on resume, lines past the checkpoint
    are dropped."""

    def __init__(self, output_dir: Path, start_step: int, trackers: Trackers):
        self.path = output_dir / "metrics.jsonl"
        kept = []
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.trackers = trackers

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.trackers.log(record)


@dataclass
class Run:
    """What a training run holds, built once by `setup`."""

    cfg: RunConfig
    output_dir: Path
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    model: torch.nn.Module          # the student itself (sampling, saving); sharded in place by FSDP
    ddp_model: torch.nn.Module      # the same, wrapped in DDP when world > 1 (training); FSDP: model
    compute_dtype: torch.dtype | None   # bf16 mixed precision (student.autocast), None: the weights'
    method: Method
    teacher: PatientTeacher | None  # the first of teachers (the only one without named teachers)
    info: object | None             # its Info
    teachers: dict[str, PatientTeacher]   # every teacher by name ({} without one)
    data: PromptData | CacheData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ctx: Context
    step: int                       # steps done (restored on resume)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: RunConfig, output_dir: str | Path, resume: bool = False, allow_config_change: bool = False) -> Run:
    """Distributed init, student (or its latest checkpoint), teacher checks, data, optimizer.
    The run folder is checked first and records the configuration and the teacher's Info
    (student_worker/train/run_record.py)."""
    rank, world, device = init_distributed()
    if cfg.student.num_threads:
        torch.set_num_threads(cfg.student.num_threads)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_record.check_output_dir(output_dir, cfg, resume, allow_config_change)
    tokenizer = AutoTokenizer.from_pretrained(cfg.student.path, revision=cfg.student.revision,
                                              trust_remote_code=cfg.student.trust_remote_code)
    ckpt = _resume_point(output_dir, cfg, rank) if resume else None
    s = cfg.student
    weights_dtype, compute_dtype = precision(s.dtype, s.autocast, lora=s.lora is not None, device=device)
    if weights_dtype == torch.bfloat16 and s.lora is None and rank == 0:
        logger.warning("student.dtype=bfloat16 trains pure bf16 weights: AdamW's small updates round away "
                       "(at lr 1e-5 most weights never move). student.dtype=auto keeps float32 weights "
                       "and computes in bf16 (student.autocast)")
    model = _load_student(cfg, ckpt, device, weights_dtype)
    method = get_method(cfg)
    cached = cache_kind(cfg.data.source)
    sharpened = [k for k, t in cfg.teachers_by_name.items() if t.temperature != 1]
    # Score's targets: a loss that reads scores, not skd's (from Verify) nor a cache's (scored before)
    scored_live = method.loss.needs_scores and not isinstance(method.source, InterleavedDrafts) and cached != "score"
    if sharpened and not scored_live:
        raise SystemExit(f"teacher.temperature (set for {sharpened}) sharpens Score's targets, and method "
                         f"{method.name!r} on data.source {cfg.data.source} trains on none: leave it at 1")
    teachers, infos = _connect_teachers(cfg, method, method.teacher_needed(scores_cached=cached == "score"),
                                        tokenizer, announce=rank == 0)
    teacher, info = next(iter(teachers.values()), None), next(iter(infos.values()), None)
    if rank == 0:
        run_record.write(output_dir, cfg, infos)
    # stop on every end-of-sequence id a teacher or the student declares (incl. end of turn)
    eos_ids = eos_ids_of(tokenizer, model, [i for x in infos.values() for i in x.special_tokens.eos_ids])
    # prompt + completion must fit every teacher's context
    max_context = min((x.max_context for x in infos.values() if x.max_context), default=None)
    data_cfg = cfg.data
    if max_context:   # a prompt needs room for at least one new token
        limit = min(cfg.data.max_prompt_tokens or max_context, max_context - 1)
        data_cfg = cfg.data.model_copy(update={"max_prompt_tokens": limit})
    if cached:
        try:
            data = CacheData(cfg.data.source, tokenizer, rank, world, cfg.train.seed, cfg.data.batch_size,
                             top_k=cfg.scoring.top_k if cfg.scoring else None)
        except CacheError as exc:
            raise SystemExit(f"cannot train from data.source: {exc}") from None
    else:
        data = PromptData(data_cfg, tokenizer, rank, world, cfg.train.seed, eos_ids)
    if data.filtered and rank == 0:
        logger.info("left out %d prompts longer than %d tokens (data.max_prompt_tokens, the "
                    "teacher's context); %d kept", data.filtered, data_cfg.max_prompt_tokens, len(data.examples))
    if cfg.train.eval_every and data.task is None:
        raise SystemExit("train.eval_every needs a built-in task as data.source (its check)")
    if cfg.teachers is not None:
        if cached:
            raise SystemExit("named teachers read each record's teacher from data.teacher_field, and a "
                             f"cache ({cfg.data.source}) keeps no record's fields: train named teachers "
                             "from the JSONL or datasets records")
        _check_teacher_names(data, cfg)
    # FSDP turns the parameters into sharded DTensors: wrap before the optimizer sees them
    ddp_model = wrap_for_training(model, parallel=cfg.train.parallel, world=world, device=device,
                                  compute_dtype=compute_dtype, ranks_per_node=ranks_per_node())
    o = cfg.optim
    trained = [p for p in model.parameters() if p.requires_grad]   # LoRA: the adapters only
    optimizer = torch.optim.AdamW(trained, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    if ckpt and cfg.train.parallel == "fsdp":
        load_sharded(ckpt / "sharded", model, optimizer)
    step = checkpoint.load_state(ckpt, optimizer, scheduler) if ckpt else 0
    model.train()
    ctx = Context(cfg, model, tokenizer, eos_ids, pad_id_of(tokenizer, eos_ids), data.task, teacher,
                  real_vocab=info.tokenizer_size if info else len(tokenizer),
                  max_context=max_context)
    if cfg.sampling.engine == "vllm":
        ctx.sampler = _start_vllm_sampler(cfg, method, ckpt, model, device, world, step,
                                          compute_dtype or weights_dtype)
    return Run(cfg, output_dir, rank, world, device, tokenizer, model, ddp_model, compute_dtype, method, teacher,
               info, teachers, data, optimizer, scheduler, ctx, step)


def _resume_point(output_dir: Path, cfg: RunConfig, rank: int) -> Path | None:
    """The checkpoint every rank resumes from: rank 0's latest complete one. Ranks that each
    looked for their own could settle on different steps (a node without the shared folder sees
    none) and hang at their first collective."""
    latest = checkpoint.latest_checkpoint(output_dir) if rank == 0 else None
    name = every_rank(latest.name if latest else None)[0]   # a name: each rank looks in its own folder
    if name is None:
        return None
    chosen = output_dir / "checkpoints" / name
    seen = every_rank(checkpoint.readable(chosen, sharded=cfg.train.parallel == "fsdp"))
    if not all(seen):
        raise SystemExit(f"cannot resume from {chosen}: rank 0 wrote it, but rank(s) "
                         f"{[r for r, ok in enumerate(seen) if not ok]} do not see all of it. Checkpoints "
                         "need storage every node sees: put --output-dir on a shared file system")
    return chosen


@dataclass
class Timing:
    rollout_s: float        # producing completions (student sampling, teacher Generate/Verify)
    latency_s: float        # the teacher's Score calls, start to answer, summed
    wait_s: float           # how long the loop blocked on them (latency not hidden by overlap)
    latency_by_teacher: dict[str, float]   # named teachers: each one's Score calls


def _by_teacher(examples: list, run: Run) -> list[tuple[str, list]]:
    """The batch's examples by the teacher that scores them, in order of first appearance (one
    group, the run's teacher, without named teachers)."""
    if run.cfg.teachers is None:
        return [(next(iter(run.teachers), ""), examples)]
    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(example.teacher, []).append(example)
    return list(groups.items())


def rollouts(run: Run) -> Iterator[tuple[Rollout, list | None, Timing]]:
    """Batches with their teacher scores, steps run.step .. cfg.train.steps - 1.

    lag + 1 batches are kept in flight: each is sampled now and scored by the teacher on a
    background thread, so with lag > 0 scoring overlaps the updates of earlier batches; with
    train.pipeline_halves it also overlaps sampling of the batch's second half (at any lag).
    """
    cfg, method = run.cfg, run.method
    # halves only where both are the student's (or the data's) own work: a teacher-made source
    # would spend its per-step teacher seed twice
    halves = cfg.train.pipeline_halves and not method.source.calls_teacher

    def score(rollout, name: str):
        start = time.monotonic()
        scores = run.teachers[name].score_packed(rollout.sequences, rollout.prompt_lens,
                                                 top_k=method.score_top_k(cfg), dtype=cfg.scoring.logprob_dtype,
                                                 temperature=cfg.teachers_by_name[name].temperature)
        return scores, time.monotonic() - start, name

    def produce(step: int) -> tuple[Rollout, list]:
        """The step's rollout and its pending Score calls. Named teachers: each teacher's part
        of the batch is produced with it (its Generate, its Verify) and scored by it while the
        next part samples. In halves (one teacher): the teacher scores the first half while the
        student samples the second, with the same weights (still on-policy)."""
        # sampling at a step depends only on (seed, step, rank): resumes replay it exactly
        torch.manual_seed(derive_seed(cfg.train.seed, "sample", step, run.rank))
        groups = _by_teacher(run.data.batch(step), run)
        if len(groups) == 1 and halves and len(groups[0][1]) > 1:
            (name, examples), = groups
            cut = len(examples) // 2
            groups = [(name, examples[:cut]), (name, examples[cut:])]
        parts, pending = [], []
        with full_weights(run.model):   # FSDP: gathered once per step (all parts), not per token
            for name, part in groups:
                ctx = run.ctx if not name or run.teachers[name] is run.teacher else dataclasses.replace(
                    run.ctx, teacher=run.teachers[name])
                rollout = method.source.rollout(part, ctx, step)
                rollout.teachers = [name] * len(part)
                if method.needs_scores(rollout):
                    pending.append(pool.submit(score, rollout, name))   # scored while the next part samples
                parts.append(rollout)
        return Rollout.concat(parts), pending

    pool = ThreadPoolExecutor(max(1, len(run.teachers)), thread_name_prefix="teacher")
    pipeline: collections.deque = collections.deque()
    next_step = run.step
    try:
        while next_step < cfg.train.steps or pipeline:
            start = time.monotonic()
            while len(pipeline) <= cfg.train.lag and next_step < cfg.train.steps:
                pipeline.append(produce(next_step))
                next_step += 1
            rollout, pending = pipeline.popleft()
            waiting = time.monotonic()
            answers = [p.result() for p in pending]
            scores = TeacherScores.concat([s for s, _, _ in answers]) if answers else rollout.teacher_scores
            latency = sum(seconds for _, seconds, _ in answers)   # teacher time, overlapped or not
            by_teacher = collections.Counter()
            for _, seconds, name in answers:
                by_teacher[name] += seconds
            yield rollout, scores, Timing(waiting - start, latency, time.monotonic() - waiting, dict(by_teacher))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def update(run: Run, rollout: Rollout, scores) -> tuple[torch.Tensor, dict]:
    """One optimizer step on the method's loss over the rollout's completion tokens.

    The loss is the per-token mean over every rank's completion tokens (method.reduction),
    computed by chunked_loss a chunk of positions at a time, over train.micro_batch_size
    sequences at a time. Returns this rank's part of it times world (DDP and FSDP average
    gradients over ranks): the sum over ranks divided by world is the loss."""
    cfg, loss_row = run.cfg, run.method.loss
    run.optimizer.zero_grad(set_to_none=True)
    batch = to_device(token_batch(rollout, run.ctx.pad_id), run.device)
    teacher = (to_device(teacher_batch(scores, rollout, batch.targets_BS.shape[1]), run.device)
               if scores else None)
    sampler_logs = _compare_with_sampler(run, rollout, batch)   # engine=vllm: sets TIS weights
    inputs = loss_row.inputs(cfg.method, batch, teacher, rollout)
    # the counts of the whole batch over all ranks (one collective), never of a micro-batch
    weights_M = reduction_weights(batch.mask_BS, cfg.method.reduction, completion_counts(batch.mask_BS), run.world)
    if batch.token_weights_BS is not None:   # sampling.tis_cap
        weights_M = weights_M * batch.token_weights_BS[batch.mask_BS]
    loss, token_logprobs_M = accumulate_gradients(
        run.ddp_model, RealVocabHead(run.model.get_output_embeddings(), _mask_limit(run, batch)),
        batch.input_ids_BT, batch.attention_BT, batch.mask_BS,
        loss_row.per_token(cfg.method), weights_M, inputs, micro_batch_size=cfg.train.micro_batch_size,
        chunk_size=cfg.train.loss_chunk_size, autocast_dtype=run.compute_dtype)
    logs = {**loss_row.logs(cfg.method, loss.item() / run.world, token_logprobs_M, inputs, rollout),
            **sampler_logs}
    if cfg.teachers is not None:
        logs.update(_per_teacher(rollout, scores, token_logprobs_M))
    if rollout.acceptance is not None:
        logs["acceptance_rate"] = rollout.acceptance
    clip = run.cfg.optim.grad_clip
    logs["grad_norm"] = _clip_gradients(run.model, clip) if clip else None
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return loss.detach(), logs


def _clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the trained parameters' gradient norm; the norm before clipping (over all shards)."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()   # FSDP: a DTensor


def evaluate_run(run: Run) -> dict:
    """Task accuracy on cfg.train.eval_split and, with a Verify-capable teacher, DistillSpec's
    acceptance rate of the student's drafts. Seeded: every rank draws the same samples."""
    with full_weights(run.model):   # FSDP: gathered once for the whole evaluation
        return _evaluate(run)


def _evaluate(run: Run) -> dict:
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
                run.model, run.teacher, prompts, gamma=cfg.train.eval_draft_tokens,
                max_new_tokens=cfg.sampling.max_new_tokens, mode="speculative", eos_ids=run.ctx.eos_ids,
                pad_id=run.ctx.pad_id, score_top_k=1, seed=cfg.train.seed)
        out[f"{split}_acceptance"] = acceptance(results)["acceptance_rate"]
    return out


def train(cfg: RunConfig, output_dir: str | Path, resume: bool = False, progress: bool = True,
          allow_config_change: bool = False) -> Path:
    """Run cfg.train.steps steps (from the latest checkpoint when resume); return the final
    checkpoint folder. progress=False hides the bar (for a caller that shows its own).
    allow_config_change: resume although cfg differs from the run's recorded config.yaml."""
    run = setup(cfg, output_dir, resume, allow_config_change)
    t = cfg.train
    log = _MetricsLog(run.output_dir, run.step, Trackers(run.output_dir, cfg)) if run.is_main else None
    bar = tqdm(total=t.steps, initial=run.step, desc=cfg.method.name, dynamic_ncols=True,
               disable=not (run.is_main and progress))
    started, first_step = time.monotonic(), run.step
    teacher_time = teacher_wait = 0.0
    try:
        if t.eval_every and run.step == 0:   # every rank (FSDP's forwards are collective), logged once
            initial = _agreed(lambda: evaluate_run(run))
            if run.is_main:
                log.write({"step": 0, **initial})
        batches = rollouts(run)
        while (batch := _agreed(lambda: next(batches, None))) is not None:
            rollout, scores, timing = batch
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
            evaluated = _agreed(lambda: evaluate_run(run)) if t.eval_every and run.step % t.eval_every == 0 else {}
            if run.is_main:
                now = time.monotonic()
                step_s = timing.rollout_s + timing.wait_s + now - update_start
                log.write({"step": run.step, "loss": stats[0].item() / run.world, **logs,
                           "lr": run.scheduler.get_last_lr()[0], "samples": int(stats[2]),
                           "completion_tokens": int(stats[1]), "tokens_per_s": stats[1].item() / step_s,
                           "rollout_s": timing.rollout_s, "update_s": now - update_start,
                           "teacher_latency_s": timing.latency_s, "teacher_wait_s": timing.wait_s,
                           **({f"teacher_latency_s.{n}": v for n, v in timing.latency_by_teacher.items()}
                              if cfg.teachers is not None else {}),
                           "hidden_fraction": 1 - teacher_wait / teacher_time if teacher_time else None,
                           "source": rollout.source, "elapsed_s": now - started, **evaluated})
                bar.set_postfix(loss=f"{stats[0].item() / run.world:.4f}")
                bar.update(1)
            reached = bool(t.stop_at_accuracy and evaluated
                           and evaluated[f"{t.eval_split}_sampled"] >= t.stop_at_accuracy)
            preempted = bool(t.stop_after and run.step - first_step >= t.stop_after)
            if run.step == t.steps or reached or preempted or (t.save_every and run.step % t.save_every == 0):
                _save(run)
            if run.step == t.steps or reached:
                _export(run)
            if reached or preempted:
                break
    except TeacherUnreachable as exc:
        _save(run)
        raise SystemExit(f"stopping: {exc}. Checkpoint at step {run.step} in {run.output_dir}; "
                         "continue with --resume once the teacher is back.") from exc
    except grpc.RpcError as exc:   # non-transient (the patient client retried the others)
        _save(run)
        raise SystemExit(f"stopping: the teacher refused a request ({exc.code().name}: {exc.details()}). "
                         f"Checkpoint at step {run.step} in {run.output_dir}.") from exc
    except StoppedByAnotherRank as exc:
        _save(run)
        raise SystemExit(f"stopping: {exc}. Checkpoint at step {run.step} in {run.output_dir}.") from exc
    finally:
        bar.close()
        if log is not None:
            log.trackers.close()
        for teacher in run.teachers.values():
            teacher.client.close()
        if run.ctx.sampler is not None:
            run.ctx.sampler.close()
    if run.is_main and teacher_time:
        logger.info("teacher time hidden by overlap: %.0f%% (%.1f s waited of %.1f s)",
                    100 * (1 - teacher_wait / teacher_time), teacher_wait, teacher_time)
    return checkpoint.checkpoint_dir(run.output_dir, run.step)


class StoppedByAnotherRank(RuntimeError):
    """Another rank's teacher call failed: this rank stops with it, at the same step."""


def _agreed(call):
    """call() on every rank, and whether every rank's call went through, agreed (one
    all_gather_object). A teacher failure on one rank then stops every rank at the same point, to
    save together: alone, the failing rank would enter the checkpoint's collectives while the
    others wait in the update's, and the job would hang until the collective timeout. Re-raises
    this rank's own failure; raises StoppedByAnotherRank on the others."""
    try:
        result, failure = call(), None
    except (TeacherUnreachable, grpc.RpcError) as exc:
        result, failure = None, exc
    failed = [rank for rank, its_failure in enumerate(every_rank(failure is not None)) if its_failure]
    if failure is not None:
        raise failure
    if failed:
        raise StoppedByAnotherRank(f"the teacher call of rank {failed[0]} failed (its log says why)")
    return result


def _load_student(cfg: RunConfig, ckpt: Path | None, device: torch.device, dtype: torch.dtype):
    """The student ready to train (student.gradient_checkpointing, student.lora), its weights in
    `dtype`, from the checkpoint when resuming: its weights (full fine-tuning), its adapters on
    the base weights (LoRA), or the base weights that setup overwrites with the sharded
    checkpoint (FSDP)."""
    s = cfg.student
    hub = dict(revision=s.revision, trust_remote_code=s.trust_remote_code)
    torch.manual_seed(cfg.train.seed)   # a random init (student.init=config, LoRA's B A) is the seed's
    if ckpt is not None and s.lora is None and cfg.train.parallel != "fsdp":
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, trust_remote_code=s.trust_remote_code)
    elif s.init == "config":
        from transformers import AutoConfig

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(s.path, **hub), dtype=dtype,
                                                 trust_remote_code=s.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(s.path, dtype=dtype, **hub)
    resume_adapters = ckpt is not None and s.lora is not None
    model = prepare_student(model.to(device), gradient_checkpointing=s.gradient_checkpointing,
                            lora=None if resume_adapters else s.lora)
    if resume_adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, ckpt, is_trainable=True)
    return model


def _start_vllm_sampler(cfg: RunConfig, method: Method, ckpt: Path | None, model, device, world, step, dtype):
    if method.source.needs_full_distributions:
        raise SystemExit(f"method {cfg.method.name!r} drafts with the student's full distributions, "
                         "which the vllm engine does not return: use sampling.engine=hf")
    from student_worker.rollouts.vllm_sampling import start_sampler  # vLLM only when asked for

    return start_sampler(cfg, str(ckpt or cfg.student.path), model, device, world, step, dtype)


def _mask_limit(run: Run, batch) -> int | None:
    """The tokenizer's size when every target is a real token (then padded ids get no mass in
    the student's log-softmax), else None: a completion holding a padded id would otherwise cost
    an infinite loss. Neither our teacher nor the hf sampler draws padded ids; the vllm engine
    can where a model pads more rows than vLLM's logit_bias takes (distill/padded_vocab.py)."""
    real = run.ctx.real_vocab
    if real is None or not bool((batch.targets_BS[batch.mask_BS] >= real).any()):
        return real
    return None


def _compare_with_sampler(run: Run, rollout: Rollout, batch) -> dict:
    """For a rollout the vllm engine sampled: the training model's log-probs of its tokens at the
    sampling temperature against the engine's (sampler_mismatch.compare_with_sampler), from one
    extra no-grad forward; the head runs train.loss_chunk_size positions at a time, masked like
    the loss's, so the batch's [B, S, V] logits never exist. Under FSDP every rank runs it."""
    if rollout.sampler_weights_step is None:
        return {}
    cfg = run.cfg
    head = RealVocabHead(run.model.get_output_embeddings(), _mask_limit(run, batch))
    trainer_BS = trainer_token_logprobs(run.model, head, batch, cfg.sampling.temperature,
                                        chunk_size=cfg.train.loss_chunk_size,
                                        micro_batch_size=cfg.train.micro_batch_size,
                                        autocast_dtype=run.compute_dtype)
    return compare_with_sampler(rollout, batch, trainer_BS, cfg.sampling, run.step)


def _sampler_updating(run: Run):
    """The vllm engine asleep during the update and synced after it (every sampling.sync_every)."""
    sampler = run.ctx.sampler
    if sampler is None:
        return contextlib.nullcontext()
    return sampler.updating(run.model, run.step + 1, run.cfg.sampling.sync_every)


def _connect_teachers(cfg: RunConfig, method: Method, needs_teacher: bool, tokenizer, announce: bool):
    """The patient client and the Info of every teacher by name, after checking the student can
    train against each ({}, {} for a run that needs no teacher and has none configured).
    announce: print the retry messages of a teacher outage (one rank does)."""
    configured = cfg.teachers_by_name
    if not configured:
        if needs_teacher:
            raise SystemExit(f"method {cfg.method.name!r} needs a teacher: set teacher.target"
                             + (" (a distill-score cache as data.source brings the scores of data "
                                "completions only)" if method.loss.needs_scores else ""))
        return {}, {}
    teachers, infos = {}, {}
    for name, t in configured.items():
        key = f"teachers.{name}" if cfg.teachers is not None else "teacher"
        client = TeacherClient(t.target, timeout=t.timeout_s, api_key=t.api_key, routing=t.routing, tls=t.tls,
                               tls_ca=t.tls_ca, tls_cert=t.tls_cert, tls_key=t.tls_key)
        teachers[name] = PatientTeacher(client, t.patience_s, announce=announce)
        try:
            infos[name] = teachers[name].info()
        except TeacherUnreachable as exc:
            raise SystemExit(f"cannot start: {f'{key}: ' if cfg.teachers is not None else ''}{exc}") from exc
        check_tokenizer(infos[name], tokenizer, cfg.student.path)
        if t.top_k > infos[name].max_top_k:
            raise SystemExit(f"{key}.top_k={t.top_k} exceeds the teacher's max_top_k={infos[name].max_top_k}")
        if t.temperature != 1 and not infos[name].features.score_temperature:
            raise SystemExit(f"{key}.temperature={t.temperature:g}: this teacher's backend scores at "
                             f"temperature 1 only ({infos[name].backend}); leave it at 1")
    return teachers, infos


def _check_teacher_names(data, cfg: RunConfig) -> None:
    """With named teachers every example must name one of them (data.teacher_field)."""
    field = cfg.data.teacher_field
    for i, example in enumerate(data.examples):
        if example.teacher not in cfg.teachers:
            said = "has no" if example.teacher is None else f"names teacher {example.teacher!r} in its"
            raise SystemExit(f"example {i} of {cfg.data.source} {said} {field!r} field; with named teachers "
                             f"every record names one of {sorted(cfg.teachers)} (data.teacher_field)")


def _per_teacher(rollout: Rollout, scores, token_logprobs_M: torch.Tensor) -> dict:
    """Named teachers: each one's completion tokens in the batch and the student's mean log-ratio
    to it on them, log q(token) - log p(token) (on the student's own samples: the sampled reverse
    KL estimate), this rank's."""
    names = list(dict.fromkeys(rollout.teachers))
    # the teacher of each completion token, in the row-major order of token_logprobs_M and scores
    teacher_M = torch.tensor([names.index(n) for n in rollout.teachers]).repeat_interleave(
        torch.tensor([len(c) for c in rollout.completion_ids]))
    tokens = torch.bincount(teacher_M, minlength=len(names))
    out = {f"teacher_tokens.{name}": int(n) for name, n in zip(names, tokens)}
    if scores is not None:
        if isinstance(scores, list):
            scores = TeacherScores.concat(scores)
        ratio_M = token_logprobs_M.detach().float().cpu() - scores.token_logprobs
        sums = torch.bincount(teacher_M, weights=ratio_M.double(), minlength=len(names))
        out.update({f"kl_estimate.{name}": float(s / n) for name, s, n in zip(names, sums, tokens) if n})
    return out


def _save(run: Run) -> None:
    if run.cfg.train.parallel == "fsdp":
        _save_sharded(run)
        return
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
    _rotate(run)


def _save_sharded(run: Run) -> None:
    """FSDP: every rank writes its shard of the weights and optimizer states (resumable at
    another world size); rank 0 the tokenizer and the rest of the training state."""
    path = checkpoint.checkpoint_dir(run.output_dir, run.step)
    save_sharded(path / "sharded", run.model, run.optimizer)
    if run.is_main:
        run.tokenizer.save_pretrained(path)
        checkpoint.save_state(path, run.step, run.scheduler)
    _rotate(run)


def _rotate(run: Run) -> None:
    """train.keep_last on every node: rank 0 (which sees every checkpoint complete) names the
    stale ones, each node's first rank deletes its copy (FSDP shards live where they were
    written). Collective: it also waits for rank 0's writes."""
    stale = every_rank(checkpoint.stale(run.output_dir, run.cfg.train.keep_last) if run.is_main else None)[0]
    if is_node_leader():
        checkpoint.remove(run.output_dir, stale)


def _export(run: Run) -> None:
    """The final student as an ordinary Hugging Face folder beside its checkpoint (hf/): LoRA
    merged into the weights, FSDP gathered. A full fine-tuning checkpoint already is one."""
    if run.cfg.student.lora is None and run.cfg.train.parallel != "fsdp":
        return
    export_hf(checkpoint.checkpoint_dir(run.output_dir, run.step) / "hf", run.model, run.tokenizer)
    if run.world > 1:
        dist.barrier()

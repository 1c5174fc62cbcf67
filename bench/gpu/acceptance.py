"""GPU acceptance: the real teacher server and the real worker loop on one GPU, in the
combinations users launch, in one run that prints one table. The first thing to run on a GPU.

    python bench/gpu/acceptance.py --device cpu        # the same phases at toy size (~25 s; the suite)
    python bench/gpu/acceptance.py --out DIR           # one GPU; the table also as DIR/acceptance.md

On the lent H100 (PyTorch 2.11, transformers 5.17, PEFT, grpcio there, no network): fetch the
missing wheels into .whl/ once, here (bench/gpu/wheels.txt holds the list and the command,
~12 MB), then the device tool's `run` with carry [".whl"] and timeout_s 560 is this one line:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 bench/gpu/acceptance.py --out $OUT

Models (random weights, nothing downloaded): a character tokenizer filled to Qwen2.5's 151,665
tokens, and from Qwen2.5's published configurations a 0.5B student and a 1.5B teacher with tied
embeddings of 151,936 rows (271 padded rows past the tokenizer), saved in bfloat16 as the
released checkpoints are. --device cpu keeps the structure at toy size (640 rows, 600 tokens).

The run, in order:
1. Score over gRPC / the same forward and top-k in process, re-measured on the device by
   bench.score_overhead (the README's 19.5M model, 8 x 512, k = 64; goal <= 1.10, judged on a
   GPU only: a toy model's forward on a CPU is too short to mean anything).
2. The teacher in its own process on the same device (teacher_server.process; transformers
   backend, bfloat16 on a GPU), first checked for reuse (REUSE_ROW): Verify rounds with a session
   key against without (its /metrics must count the hits), samples of one prompt scored together
   (their start run once) against alone, Score's text form against the same ids; log-probs apart
   by at most 1e-4 on a CPU, 0.25 in bfloat16 (a cached forward adds its rounding).
3. student_worker.train.trainer.train, the gkd preset, one phase per entry of `phases`, each from the
   same initial student, with the user's default dtypes (nothing here sets student.dtype or
   student.autocast). "ddp" is train.parallel=ddp on one rank: the model itself, as
   `python -m student_worker` trains on one GPU. The FSDP phases come last (a crash there
   cannot spoil the others) and run inside a 1-rank process group made here (gloo on CPU,
   cpu:gloo,cuda:nccl on GPU; the trainer makes one only for WORLD_SIZE > 1, and without one
   wrap_for_training would leave the model unsharded), so fully_shard really runs.

Checks per phase: the run ends on the right checkpoint (a stop at step 2, then the resume at 4);
metrics.jsonl holds steps 1..N with no gap; every loss and gradient norm is finite; the weights
moved: for full fine-tuning >= 99% of the weight matrices and >= 99% of their elements (the
embedding over the tokenizer's rows; float32 master weights move every element that has a
gradient, pure bf16 rounds the small updates away: 84% of elements at the default lr on the toy),
for LoRA every adapter's B matrix (zero at the start). Columns: this process's peak GPU memory
(reset per phase), the whole GPU's peak (teacher + student, polled), the median step time after
the first step (sampling + waiting for the teacher + update), scored tokens/s (completion tokens
/ step time) and the phase's wall time. Ends with "ALL PASS" or the failures (exit code 1).
Expected to take ~5 minutes on an H100 (not yet run on one); a phase that would start past
--budget-s (420 s) is skipped and fails, so the run stays inside 8 minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

# Qwen2.5's config.json (0.5B and 1.5B share the tokenizer, 151,936 embedding rows, tied)
QWEN25 = dict(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
              tie_word_embeddings=True, use_sliding_window=False)
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
    # the same structure (GQA, q/k/v biases, tied and padded embeddings) at toy size
    "toy-student": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2),
    "toy-teacher": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                        num_attention_heads=6, num_key_value_heads=2),
}
# per device: models, the teacher's dtype, batch (prompts x new tokens), micro-batch, steps per
# phase, Score ratio repetitions, time budget
SETUPS = {
    "cuda": dict(student="qwen2.5-0.5b", teacher="qwen2.5-1.5b", rows=151936, tokens=151665,
                 teacher_dtype="bfloat16", batch=16, new_tokens=128, micro=4, steps=3, ratio_runs=9,
                 budget_s=420),
    "cpu": dict(student="toy-student", teacher="toy-teacher", rows=640, tokens=600,
                teacher_dtype="float32", batch=4, new_tokens=8, micro=2, steps=3, ratio_runs=3,
                budget_s=240),
}


@dataclass
class Phase:
    name: str
    overrides: list[str]
    resume: bool = False    # stop after half the steps (train.stop_after), then resume to the end


def phases(micro: int) -> list[Phase]:
    """The runs users launch together, unsharded first: an FSDP crash cannot spoil the others."""
    accumulate = [f"train.micro_batch_size={micro}", "student.gradient_checkpointing=true"]
    return [
        Phase("ddp", []),
        Phase("lora", ["student.lora.r=16"]),
        Phase("micro-batches + checkpointing", accumulate),
        Phase("stop + resume (ddp)", [], resume=True),
        Phase("fsdp", ["train.parallel=fsdp"]),
        Phase("fsdp + lora + micro-batches + checkpointing", ["train.parallel=fsdp", "student.lora.r=16",
                                                              *accumulate]),
        Phase("stop + resume (fsdp)", ["train.parallel=fsdp"], resume=True),
    ]


PHASE_NAMES = [p.name for p in phases(1)]
RATIO_ROW = "Score over gRPC / in process"
REUSE_ROW = "teacher reuse: Verify sessions, shared starts, text form"
REUSE_TOLERANCE = {"cpu": 1e-4, "cuda": 0.25}   # |log p| apart, reuse vs none (bfloat16 on a GPU: loose)


@dataclass
class Row:
    phase: str
    result: str = "FAIL"                  # PASS, FAIL or n/a (not judged on this device)
    reason: str = ""
    peak_gib: float | None = None         # this process (the student)
    device_peak_gib: float | None = None  # the whole GPU: teacher + student
    step_s: float | None = None
    tokens_per_s: float | None = None
    wall_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    error: str | None = None              # the traceback of a crash


# --------------------------------------------------------------------------------------------
# models


def make_model(out_dir: pathlib.Path, shape: str, rows: int, tokenizer, device: str, seed: int) -> int:
    """A random-weight Qwen2 of SHAPES[shape] with `rows` embedding rows, saved in bfloat16 (as
    the released checkpoints are, so a float32 student starts from exactly these values) with
    the tokenizer; returns its parameter count."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**QWEN25, **SHAPES[shape], vocab_size=rows, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):      # random init on the device: seconds, not minutes, for 1.5B
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    del model
    return params


def load_weights(folder: pathlib.Path, pattern: str = "*.safetensors") -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(folder.glob(pattern)):
        weights.update(load_file(file))
    if not weights:
        raise FileNotFoundError(f"no {pattern} in {folder}")
    return weights


def sharded_weights(path: pathlib.Path, keep) -> dict[str, torch.Tensor]:
    """The tensors of a torch.distributed.checkpoint folder (parallel.save_sharded) whose names
    `keep` accepts, read whole into this process."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    wanted = {n: torch.empty(m.size, dtype=m.properties.dtype) for n, m in meta.items()
              if keep(n) and hasattr(m, "size")}
    dcp.load(wanted, checkpoint_id=path, no_dist=not dist.is_initialized())
    return wanted


def lora_b(final: pathlib.Path) -> dict[str, torch.Tensor]:
    """The adapters' B matrices of a LoRA checkpoint: PEFT's file, or the FSDP shards."""
    if (final / "sharded").is_dir():
        return sharded_weights(final / "sharded", lambda n: n.startswith("model.") and "lora_B" in n)
    return {n: t for n, t in load_weights(final, "adapter_model.safetensors").items() if "lora_B" in n}


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], rows: int,
          tokens: int) -> tuple[float, float, int]:
    """(fraction of before's weight matrices with any element changed, fraction of their elements
    changed, matrices compared). The embedding counts its first `tokens` rows only: the padded
    rows past the tokenizer get no gradient by design. Compared in float32, so a bf16 start
    against float32 weights is exact."""
    names = [n for n, t in before.items() if t.ndim == 2]
    missing = [n for n in names if n not in after]
    if missing:
        raise KeyError(f"{len(missing)} weights missing after training, e.g. {missing[0]}")
    changed = elements = total = 0
    for n in names:
        a, b = before[n], after[n]
        if a.shape[0] == rows:   # the (tied) embedding
            a, b = a[:tokens], b[:tokens]
        diff = int((a.float() != b.float()).sum())
        changed += diff > 0
        elements += diff
        total += a.numel()
    return changed / len(names), elements / total, len(names)


# --------------------------------------------------------------------------------------------
# measuring


class DevicePeak:
    """The whole GPU's peak memory in use (every process: the teacher's too), polled every 0.1 s
    (cudaMemGetInfo; no sync with this process's streams)."""

    def __init__(self, on: bool):
        self.on, self.peak, self._stop = on, 0, threading.Event()

    def __enter__(self):
        if self.on:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.1):
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)

    def __exit__(self, *exc):
        if self.on:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return self.peak / 2**30 if self.on else None


def step_times(lines: list[dict]) -> tuple[float | None, float | None]:
    """(median step seconds, scored tokens/s) over the steps after the first (which warms up)."""
    timed = lines[1:] or lines
    try:
        seconds = [x["rollout_s"] + x["teacher_wait_s"] + x["update_s"] for x in timed]
        tokens = sum(x["completion_tokens"] for x in timed)
    except KeyError:
        return None, None
    return (statistics.median(seconds), tokens / sum(seconds)) if seconds else (None, None)


# --------------------------------------------------------------------------------------------
# phases


def one_rank_group(device: str) -> None:
    """A 1-rank process group (what torchrun would join for world size 1, plus the group the
    trainer only makes for world size > 1), so the FSDP phases shard for real."""
    from student_worker.distributed import backend_spec

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    dist.init_process_group(backend_spec(torch.device(device)), rank=0, world_size=1)


def crash(exc: BaseException) -> str:
    """An exception in one line: its first line and its last three (a teacher that did not
    start ends its message with the server's log; pydantic starts with the field)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 4:
        lines = [lines[0], "...", *lines[-3:]]
    return f"crashed: {type(exc).__name__}: {' / '.join(lines)}"[:600]


@dataclass
class Start:
    """The student before training: its weights, embedding rows and tokenizer size."""

    weights: dict[str, torch.Tensor]
    rows: int
    tokens: int


def check_run(cfg, out_dir: pathlib.Path, final: pathlib.Path, lines: list[dict],
              start: Start) -> tuple[list[str], str]:
    """What a correct run leaves behind: (the problems found, the evidence that it trained)."""
    from student_worker.train import checkpoint
    steps, problems = cfg.train.steps, []
    latest = checkpoint.latest_checkpoint(out_dir)
    if final != checkpoint.checkpoint_dir(out_dir, steps) or latest != final:
        problems.append(f"ended on {final.name} (latest {getattr(latest, 'name', None)}), not step {steps}")
    if [x["step"] for x in lines] != list(range(1, steps + 1)):
        problems.append(f"metrics.jsonl steps {[x['step'] for x in lines]}, not 1..{steps}")
    bad = [x["step"] for x in lines
           if not all(math.isfinite(x[k]) for k in ("loss", "grad_norm") if x.get(k) is not None)]
    if bad:
        problems.append(f"non-finite loss or gradient norm at steps {bad}")
    if cfg.student.lora is not None:
        b = lora_b(final)   # PEFT starts every B at zero: a B still zero never trained
        share = sum(bool(t.any()) for t in b.values()) / max(1, len(b))
        evidence = f"{share:.0%} of {len(b)} LoRA B matrices moved"
        if share < 1:
            problems.append(evidence)
        if not (final / "hf").is_dir():
            problems.append("no merged hf/ export")
    else:
        matrices, elements, n = moved(start.weights, load_weights(checkpoint.hf_folder(final)),
                                      start.rows, start.tokens)
        evidence = f"{matrices:.1%} of {n} weight matrices, {elements:.2%} of their elements moved"
        if matrices < 0.99 or elements < 0.99:
            problems.append(evidence + " (want >= 99% of each: updates rounded away?)")
    return problems, evidence


def run_phase(phase: Phase, common: list[str], work: pathlib.Path, device: str, start: Start) -> Row:
    """One phase: train (two legs for a resume), then check what it left (check_run)."""
    from student_worker.config import load_config
    from student_worker.train import checkpoint
    from student_worker.train.trainer import train

    row = Row(phase.name)
    out_dir = work / "runs" / "".join(c if c.isalnum() else "-" for c in phase.name)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began, problems = time.perf_counter(), []
    with DevicePeak(device == "cuda") as peak:
        try:
            cfg = load_config(None, "gkd", [*common, *phase.overrides])
            if cfg.train.parallel == "fsdp":
                one_rank_group(device)
            if phase.resume:
                half = cfg.train.steps // 2
                first = train(load_config(None, "gkd", [*common, *phase.overrides, f"train.stop_after={half}"]),
                              out_dir, progress=False)
                if first != checkpoint.checkpoint_dir(out_dir, half):
                    problems.append(f"train.stop_after={half} ended on {first.name}")
                final = train(cfg, out_dir, resume=True, progress=False)
            else:
                final = train(cfg, out_dir, progress=False)
        except (Exception, SystemExit) as exc:
            problems.append(crash(exc))
            row.error = traceback.format_exc()
            print(row.error, file=sys.stderr)
    if device == "cuda":
        try:
            torch.cuda.synchronize()
            row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        except RuntimeError as exc:   # a CUDA error of the crash above: the row says why
            print(f"no peak memory: {exc}", file=sys.stderr)
    row.device_peak_gib, row.wall_s = peak.gib, time.perf_counter() - began
    metrics = out_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    row.losses = [x.get("loss") for x in lines]
    row.step_s, row.tokens_per_s = step_times(lines)
    if row.error is None:
        try:
            found, evidence = check_run(cfg, out_dir, final, lines, start)
            problems += found
        except Exception as exc:   # e.g. a checkpoint that does not load
            problems.append(f"checking the run failed: {type(exc).__name__}: {exc}")
            row.error = traceback.format_exc()
    shutil.rmtree(out_dir, ignore_errors=True)   # a 0.5B run's checkpoints: ~6 GB each (optimizer states)
    if problems:
        row.reason = "; ".join(problems)
    else:
        row.result, row.reason = "PASS", f"{len(lines)} steps, finite losses, {evidence}"
    return row


def score_ratio(work: pathlib.Path, device: str, runs: int) -> Row:
    """bench.score_overhead's first ratio, on this device; judged on a GPU only (on a CPU the
    forward pass of a toy model is too short to mean anything)."""
    from bench.models import bench_model
    from bench.score_overhead import SEQ_LEN, SEQS, TOP_K, bench_grpc_vs_in_process
    from scripts.tiny_model import make_tiny_model

    row = Row(f"{RATIO_ROW} ({SEQS}x{SEQ_LEN}, k={TOP_K})")
    start = time.perf_counter()
    try:
        model_dir = (bench_model(None, work) if device == "cuda"   # the README's 19.5M model
                     else make_tiny_model(work / "score-toy", preset="tiny", max_position_embeddings=1024))
        t_grpc, t_local = bench_grpc_vs_in_process(model_dir, runs, device)
        ratio = t_grpc / t_local
        row.reason = f"{ratio:.2f} = {t_grpc * 1e3:.1f} ms / {t_local * 1e3:.1f} ms (goal <= 1.10)"
        row.result = ("PASS" if ratio <= 1.10 else "FAIL") if device == "cuda" else "n/a"
    except Exception as exc:
        row.reason, row.error = crash(exc), traceback.format_exc()
    row.wall_s = time.perf_counter() - start
    return row


def reuse_row(teacher, device: str, tokenizer) -> Row:
    """The teacher on this device answers as without reuse: 6 greedy Verify rounds with a
    session key and without (the server's own counters must show the cache read back), 6 samples
    of one prompt scored together (their start run once) and each alone, and the text form against
    the same ids; log-probs within REUSE_TOLERANCE."""
    import httpx

    from distill.client.teacher_client import TeacherClient

    row = Row(REUSE_ROW)
    start = time.perf_counter()
    try:
        g = torch.Generator().manual_seed(0)
        ids = lambda n: torch.randint(100, len(tokenizer), (n,), generator=g).tolist()  # noqa: E731
        prompt, apart = ids(300), {}
        with TeacherClient(teacher.target, timeout=120) as client:
            prefix = list(prompt)
            for draft in [ids(4) for _ in range(6)]:
                [plain] = client.verify([prefix], [draft], mode="greedy")
                [kept] = client.verify([prefix], [draft], mode="greedy", session_keys=["acceptance"])
                apart["sessions"] = max(apart.get("sessions", 0.0),
                                        (plain.scores.topk_logprobs - kept.scores.topk_logprobs).abs().max().item())
                prefix += draft[:plain.num_accepted] + [plain.next_token]
            seqs = [prompt + ids(20) for _ in range(6)]
            together = client.score(seqs, 300, top_k=8)
            apart["shared starts"] = max((t.token_logprobs - client.score([s], 300, top_k=8)[0].token_logprobs)
                                         .abs().max().item() for t, s in zip(together, seqs))
            [text] = client.score_text([{"prompt": "abc", "completion": "hello", "end_of_turn": True}], top_k=8)
            abc = tokenizer("abc")["input_ids"]     # the teacher's tokenizer: as the server reads the prompt
            [same] = client.score([abc + text.token_ids.tolist()], len(abc), top_k=8)
            apart["text form"] = (text.scores.token_logprobs - same.token_logprobs).abs().max().item()
        metrics = httpx.get(f"{teacher.http}/metrics", timeout=10).text.splitlines()
        counted = lambda name: sum(float(line.split()[-1]) for line in metrics if line.startswith(name))  # noqa: E731
        hits, saved = counted("teacher_session_hits_total"), counted("teacher_shared_prefix_tokens_total")
        tolerance = REUSE_TOLERANCE[device]
        row.result = "PASS" if hits >= 5 and saved >= 5 * 300 and max(apart.values()) <= tolerance else "FAIL"
        row.reason = (f"{hits:.0f} session hits, {saved:.0f} shared tokens; |log p| apart: "
                      + ", ".join(f"{k} {v:.2g}" for k, v in apart.items()) + f" (tolerance {tolerance:g})")
    except Exception as exc:
        row.reason, row.error = crash(exc), traceback.format_exc()
    row.wall_s = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------------
# the table


def table(rows: list[Row]) -> str:
    gib = lambda v: "n/a" if v is None else f"{v:.1f} GiB"
    out = ["| phase | peak GPU memory (student) | GPU in use (teacher + student) | step time | "
           "scored tokens/s | wall | result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        step = "n/a" if r.step_s is None else f"{r.step_s:.2f} s"
        rate = "n/a" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}"
        out.append(f"| {r.phase} | {gib(r.peak_gib)} | {gib(r.device_peak_gib)} | {step} | {rate} | "
                   f"{r.wall_s:.1f} s | {r.result}: {r.reason} |")
    return "\n".join(out)


def environment(device: str) -> dict:
    import transformers

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "commit": commit}


def write(out: pathlib.Path | None, rows: list[Row], header: str, env: dict, teacher_log: str = "") -> None:
    """The table so far (rewritten after every row: a run killed at its time limit keeps its rows)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance.md").write_text(f"{header}\n\n{table(rows)}\n")
    (out / "acceptance.json").write_text(json.dumps({"environment": env, "setup": header,
                                                     "rows": [r.__dict__ for r in rows]}, indent=1))
    if teacher_log:
        (out / "teacher.log").write_text(teacher_log)


def work_root(device: str) -> str | None:
    """Where the models and runs go: on a GPU machine memory (/dev/shm) when it has room, since
    the phases write ~50 GB of checkpoints (a 0.5B student's optimizer states are 4 GB) and a
    slow disk would eat the time budget; else the default temporary folder."""
    shm = "/dev/shm"
    if device == "cuda" and os.path.isdir(shm) and shutil.disk_usage(shm).free >= 40 * 2**30:
        return shm
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(SETUPS), default="cuda")
    parser.add_argument("--out", type=pathlib.Path, help="also write acceptance.md/.json and teacher.log here")
    parser.add_argument("--budget-s", type=float, help="skip phases that would start later than this "
                        "(default: 420 on a GPU, which keeps the run inside 8 minutes)")
    args = parser.parse_args()
    s = SETUPS[args.device]
    budget = args.budget_s or s["budget_s"]
    # the teacher's (and bench.score_overhead's) server processes import the project too
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # every model is a local folder; never wait on a network
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""   # this process and the teacher's: no GPU
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        parser.error("no GPU here: use --device cpu")
    from transformers.utils import logging as hf_logging

    from scripts.tiny_model import CHARS, char_tokenizer
    from teacher_server.process import TeacherProcess

    hf_logging.disable_progress_bar()   # the loading and saving bars of every phase
    started, env, rows, teacher = time.perf_counter(), environment(args.device), [], None
    header = f"{env['device']}; student {s['student']}, teacher {s['teacher']}"
    with tempfile.TemporaryDirectory(prefix="acceptance-", dir=work_root(args.device)) as tmp:
        work = pathlib.Path(tmp)
        rows.append(score_ratio(work, args.device, s["ratio_runs"]))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        try:
            tokenizer = char_tokenizer(s["tokens"] - len(CHARS))   # filler pieces up to Qwen2.5's size
            sizes = {role: make_model(work / role, s[role], s["rows"], tokenizer, args.device, seed)
                     for seed, role in enumerate(("teacher", "student"))}
            if args.device == "cuda":
                torch.cuda.empty_cache()
            count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
            header = (f"{env['device']}; student {s['student']} ({count(sizes['student'])}), teacher "
                      f"{s['teacher']} ({count(sizes['teacher'])}, {s['teacher_dtype']}, its own process), "
                      f"{s['rows']:,} embedding rows over {len(tokenizer):,} tokens, tied; gkd, "
                      f"{s['steps']} steps of {s['batch']} prompts x {s['new_tokens']} new tokens; "
                      f"torch {env['torch']}, transformers {env['transformers']}, commit {env['commit']}")
            print(header, flush=True)
            start = Start(load_weights(work / "student"), s["rows"], len(tokenizer))
            teacher = TeacherProcess(work / "teacher", "--device", args.device, "--dtype", s["teacher_dtype"],
                                     start_timeout=300)
            teacher.wait_serving(timeout=300)
            rows.append(reuse_row(teacher, args.device, tokenizer))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            common = [f"student.path={work / 'student'}", f"teacher.target={teacher.target}",
                      "teacher.patience_s=30", "data.source=reverse", "data.num_examples=256",
                      f"data.batch_size={s['batch']}", f"sampling.max_new_tokens={s['new_tokens']}"]
            for phase in phases(s["micro"]):
                steps = 4 if phase.resume else s["steps"]   # a resume: 2 steps, stop, 2 more
                if time.perf_counter() - started > budget:
                    rows.append(Row(phase.name, reason=f"skipped: past the {budget:.0f} s budget"))
                else:
                    rows.append(run_phase(phase, [*common, f"train.steps={steps}"], work, args.device, start))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                write(args.out, rows, header, env)
        except Exception as exc:   # the models or the teacher: no phase can run
            rows.append(Row("models + teacher", reason=crash(exc), error=traceback.format_exc()))
            print(rows[-1].error, file=sys.stderr)
        finally:
            if teacher is not None:
                teacher.terminate()
            write(args.out, rows, header, env, teacher.log() if teacher else "")
    if dist.is_initialized():
        dist.destroy_process_group()

    print(f"\n{header}\n\n{table(rows)}\n")
    failed = [r for r in rows if r.result == "FAIL"]
    print("ALL PASS" if not failed else "FAILED: " + "; ".join(f"{r.phase}: {r.reason}" for r in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

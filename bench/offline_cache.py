"""Offline caches on a real model: bytes per cached token, the loss error of compact storage,
and one kd step from a cache against the same step through a live teacher, side by side.

    python -m bench.offline_cache [--prompts 64] [--new-tokens 48] [--steps 6]

Teacher: SmolLM2-135M-Instruct (scripts/fetch_model.py's folder; vocabulary 49,152, so ids fit
uint16), served by `python -m teacher_server` on 127.0.0.1 with one thread; student: the teacher
pruned to 8 of its 30 layers (student_worker.tools.prune), one thread. Data: the teacher's own
answers (distill-generate, temperature 1) to the real-LLM demo's chat prompts. Printed:

1. Size: distill-score at k = 20 and 64, log-probs float32 or float16: bytes on disk per scored
   position (whole shards: ids, offsets and metadata included), beside DistillKit's published
   ~114-300 bytes a token for its compressed top-k data sets.
2. Error: the student's forward KL to the teacher's top-k + tail per token, from the float16 cache
   minus from the float32 one, over every cached position (mean of the absolute per-token
   difference, and the difference of the means the loss sees).
3. Speed: `kd` for --steps steps (batch 8), reading the float32 cache with teacher=null against
   the same data with the live teacher scoring each batch: the median step time after the first
   step (rollout + teacher wait + update, from metrics.jsonl), and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import statistics
import tempfile

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.demo_llm.prompts import write as write_prompts
from scripts.fetch_model import fetch
from student_worker.config import load_config
from student_worker.data.cache import CacheData
from student_worker.losses import divergences as D
from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
from student_worker.tools import generate_file, score_file
from student_worker.tools.prune import prune
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

DISTILLKIT = "~114-300"   # bytes a token, DistillKit's compressed top-k data sets (its README)


def quiet(main, args: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0


def bytes_per_position(folder: pathlib.Path) -> float:
    """Whole shard files over the positions they score."""
    shards = sorted(folder.glob("shard-*.safetensors"))
    positions = 0
    for path in shards:
        with safe_open(str(path), "pt") as f:
            positions += int(f.get_tensor("row_offsets")[-1])
    return sum(path.stat().st_size for path in shards) / positions


@torch.no_grad()
def per_token_kl(student, tokenizer, folder: pathlib.Path) -> torch.Tensor:
    """The student's forward KL to the cached top-k + tail at every cached position, in order."""
    data = CacheData(str(folder), tokenizer, batch_size=8)
    values = []
    for step in range(len(data) // 8):
        examples = data.batch(step)
        rollout = Rollout([e.prompt_ids for e in examples], [e.completion_ids for e in examples], "data",
                          teacher_scores=[e.teacher_scores for e in examples])
        batch = token_batch(rollout, tokenizer.pad_token_id or 0)
        teacher = teacher_batch(rollout.teacher_scores, rollout, batch.targets_BS.shape[1])
        logits = student(batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1].float()
        kl = D.divergence("forward_kl", torch.log_softmax(logits, -1), teacher_topk_ids_BTK=teacher.topk_ids_BSK,
                          teacher_topk_logprobs_BTK=teacher.topk_logprobs_BSK,
                          teacher_tail_logprobs_BT=teacher.tail_logprobs_BS)
        values.append(kl[batch.mask_BS].double())
    return torch.cat(values)


def step_seconds(run_dir: pathlib.Path) -> float:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    return statistics.median(x["rollout_s"] + x["teacher_wait_s"] + x["update_s"] for x in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher_dir = fetch("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        student_dir = root / "student"
        prune(AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32), 8)[0].save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        prompts = write_prompts(root / "prompts")["train"]
        server = TeacherProcess(teacher_dir, "--num-threads", "1", "--max-context", "512", start_timeout=600)
        try:
            server.wait_serving(timeout=600)
            generated = root / "generated"
            quiet(generate_file.main, [str(prompts), str(generated), "--teacher", server.target, "--tokenizer",
                                       str(teacher_dir), "--num-examples", str(args.prompts), "--max-new-tokens",
                                       str(args.new_tokens), "--shard-prompts", str(args.prompts)])
            caches = {}
            for k in (20, 64):
                for dtype in ("float32", "float16"):
                    caches[k, dtype] = root / f"scored-{k}-{dtype}"
                    quiet(score_file.main, [str(generated), str(caches[k, dtype]), "--teacher", server.target,
                                            "--top-k", str(k), "--dtype", dtype, "--batch-sequences", "8"])
            common = [f"student.path={student_dir}", "data.batch_size=8", f"train.steps={args.steps}",
                      "teacher.top_k=20", "optim.lr=1e-5", "student.num_threads=1"]
            online = load_config(None, "kd", [*common, f"teacher.target={server.target}",
                                              f"data.source={generated}"])
            offline = load_config(None, "kd", [*common, "teacher=null", f"data.source={caches[20, 'float32']}"])
            train(online, root / "online", progress=False)
            train(offline, root / "offline", progress=False)
        finally:
            server.terminate()
        student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
        print(f"{args.prompts} teacher answers of up to {args.new_tokens} tokens (SmolLM2-135M-Instruct), "
              f"student: its 8-layer pruning\n")
        print(f"| k | float32: bytes / position | float16: bytes / position | DistillKit | "
              f"float16 - float32, forward KL per token: mean abs | difference of the means |")
        print("| --- | --- | --- | --- | --- | --- |")
        for k in (20, 64):
            full, half = (per_token_kl(student, tokenizer, caches[k, d]) for d in ("float32", "float16"))
            print(f"| {k} | {bytes_per_position(caches[k, 'float32']):.0f} | "
                  f"{bytes_per_position(caches[k, 'float16']):.0f} | {DISTILLKIT} | "
                  f"{(half - full).abs().mean():.2e} nats | {(half.mean() - full.mean()).abs():.2e} nats |")
        live, cached = step_seconds(root / "online"), step_seconds(root / "offline")
        print(f"\nkd step (batch 8, median of steps 2..{args.steps}): live teacher {live:.2f} s, "
              f"from the cache {cached:.2f} s: the cache takes {cached / live:.2f}x the time")


if __name__ == "__main__":
    main()

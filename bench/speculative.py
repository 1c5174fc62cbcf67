"""Speculative decoding on the demo's teacher and student, before and after distillation.

    python -m bench.speculative [--steps 200] [--gamma 4]

1. Trains the initial demo student (sft until 45% sampled dev accuracy) and a gkd-distilled copy
   (--steps more steps against the teacher server), as the demo does.
2. For both: DistillSpec's acceptance rate (fraction of the student's drafts the teacher keeps,
   exact speculative sampling at temperature 1) and tokens per teacher call, on 128 test prompts.
3. The decoding speedup: wall time of speculative decoding (student drafts, teacher Verify) over
   plain teacher decoding with one teacher call per token, on the same prompts, side by side.
On this CPU the teacher is a 0.1M-parameter model, so a teacher call costs about as much as a
draft: the speedup shows the call savings, not what a 70B teacher on a GPU would gain.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.client.teacher_client import TeacherClient
from student_worker.config import load_config
from student_worker.rollouts.speculative import acceptance, speculative_generate
from student_worker.rollouts.speculative.baseline import teacher_decode
from student_worker.tasks import TASKS
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEACHER_DIR, STUDENT_DIR = ROOT / "examples" / "demo-teacher", ROOT / "examples" / "demo-student"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gamma", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    server = TeacherProcess(TEACHER_DIR)
    try:
        server.wait_serving()
        common = [f"teacher.target={server.target}", "data.source=digsum", "data.batch_size=128",
                  "sampling.max_new_tokens=10", "teacher.top_k=15", "train.seed=0",
                  "train.eval_acceptance_prompts=0"]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            initial = train(load_config(None, "sft", common + [
                f"student.path={STUDENT_DIR}", "student.init=config", "optim.lr=3e-3", "train.steps=3000",
                "train.eval_every=50", "train.stop_at_accuracy=0.45"]), tmp / "initial", progress=False)
            distilled = train(load_config(None, "gkd", common + [
                f"student.path={initial}", "optim.lr=1e-3", f"train.steps={args.steps}"]),
                tmp / "gkd", progress=False)
            client = TeacherClient(server.target)
            tokenizer = AutoTokenizer.from_pretrained(TEACHER_DIR)
            prompts = [tokenizer(e["prompt"]).input_ids for e in TASKS["digsum"].examples("test", 128)]
            rows = []
            for name, path in (("initial student", initial), (f"after gkd ({args.steps} steps)", distilled)):
                model = AutoModelForCausalLM.from_pretrained(path).eval()
                torch.manual_seed(0)
                start = time.perf_counter()
                results = speculative_generate(model, client, prompts, gamma=args.gamma, max_new_tokens=10,
                                               mode="speculative", eos_ids=[tokenizer.eos_token_id],
                                               pad_id=tokenizer.pad_token_id, score_top_k=1, seed=0)
                spec_s = time.perf_counter() - start
                start = time.perf_counter()
                teacher_decode(client, prompts, 10, 1.0, [tokenizer.eos_token_id])
                plain_s = time.perf_counter() - start
                stats = acceptance(results)
                rows.append((name, stats["acceptance_rate"], stats["tokens_per_call"], spec_s, plain_s))
    finally:
        server.terminate()
    print(f"\ndigsum, 128 test prompts, gamma = {args.gamma}, exact speculative sampling at temperature 1\n")
    print("| draft model | acceptance rate | tokens per teacher call | speculative s | one call per token s | speedup |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rate, per_call, spec_s, plain_s in rows:
        print(f"| {name} | {rate:.3f} | {per_call:.2f} | {spec_s:.2f} | {plain_s:.2f} | {plain_s / spec_s:.2f}x |")


if __name__ == "__main__":
    main()

"""How much teacher time the worker hides by scoring the next batch during the current update.

    python -m bench.worker_overlap [--steps 12]

The teacher (a ~20M-parameter model, one CPU thread, its own process) is slower than the student's
update (a small model, one thread in this process). The same gkd run is made twice against the
same server, side by side in this one run: train.lag=0 (strictly on-policy: sample, wait for the
teacher, update) and train.lag=1 (the teacher scores batch i+1 while the student updates on i).
Prints the fraction of teacher latency hidden (target >= 0.8) and steps/s with / without overlap.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile

import torch

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

VOCAB = 32000


def run(tmp: pathlib.Path, name: str, student, target, data, steps: int, lag: int) -> dict:
    cfg = load_config(None, "gkd", [
        f"student.path={student}", f"teacher.target={target}", f"data.source={data}",
        "data.batch_size=8", "sampling.max_new_tokens=24", "teacher.top_k=64",
        f"train.steps={steps}", f"train.lag={lag}", "optim.lr=1e-4"])
    train(cfg, tmp / name)
    lines = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    warm = lines[2:]  # the first steps include one-off start-up costs
    seconds = warm[-1]["elapsed_s"] - lines[1]["elapsed_s"]
    latency = sum(x["teacher_latency_s"] for x in warm)
    waited = sum(min(x["teacher_wait_s"], x["teacher_latency_s"]) for x in warm)
    median = lambda key: statistics.median(x[key] for x in warm)
    return {"steps_per_s": len(warm) / seconds, "hidden": 1 - waited / latency,
            "latency": median("teacher_latency_s"), "update": median("update_s"),
            "rollout": median("rollout_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # a teacher deeper and wider than the bench preset: slower than the student's update
        teacher = make_tiny_model(tmp / "teacher", preset="bench", hidden_size=512,
                                  intermediate_size=1376, num_hidden_layers=8)
        student = make_tiny_model(tmp / "student", preset="tiny", seed=1, vocab_size=VOCAB)
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"rev {w}=", "completion": w[::-1]}) + "\n"
                                for w in ("abc", "hello", "xyz", "distill", "teacher", "gpu", "grpc", "kl")))
        server = TeacherProcess(teacher)
        try:
            server.wait_serving()
            off = run(tmp, "lag0", student, server.target, data, args.steps, lag=0)
            on = run(tmp, "lag1", student, server.target, data, args.steps, lag=1)
        finally:
            server.terminate()
    print(f"\nteacher: Llama 512x8 layers, vocabulary {VOCAB} (1 thread, own process); student: tiny "
          f"Llama (1 thread); gkd, 8 prompts x 24 new tokens, top-64\nmedians at lag 0: teacher latency "
          f"{off['latency']:.3f} s, student update {off['update']:.3f} s, student sampling "
          f"{off['rollout']:.3f} s\n")
    print(f"| {'measure':<40} | {'lag 0':>8} | {'lag 1':>8} | {'ratio':>6} | target |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 8}|--------|")
    print(f"| {'fraction of teacher latency hidden':<40} | {off['hidden']:>8.2f} | {on['hidden']:>8.2f} | "
          f"{'':>6} | >= 0.8 |")
    print(f"| {'steps per second':<40} | {off['steps_per_s']:>8.2f} | {on['steps_per_s']:>8.2f} | "
          f"{on['steps_per_s'] / off['steps_per_s']:>6.2f} | report |")


if __name__ == "__main__":
    main()

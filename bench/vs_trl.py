"""Our on-policy gkd through the teacher server vs TRL's GKDTrainer (teacher in process), on the demo.

    python -m bench.vs_trl [--steps 300] [--seeds 0,1] [--quick] [--out vs-trl-output]
    python -m bench.vs_trl --task digsum-one-answer     # the collapse (issue 30), through TRL too

Side by side in one run, per seed, from the same initial student (the demo's: examples/demo.py
trains it by sft to a target dev accuracy) on the same prompts in the same order, with the demo's
batch (128), learning rate (1e-3), max_new_tokens (10), temperature (1) and JSD(beta = 0.5):
(a) TRL 1.16 `GKDTrainer`, lmbda = 1 (fully on-policy), the teacher (examples/demo-teacher) in
    its process; run by bench/trl_gkd.py inside TRL's own virtual environment, which this script
    creates on first use (DISTILL_CACHE/trl-venv, default ~/.cache/distill/trl-venv; the same
    torch and transformers as ours, trl pinned), never in the project's.
(b) our `gkd` with train.lag=0 (strictly on-policy: sample, Score, update) against a real
    `python -m teacher_server` on 127.0.0.1.
Threads: 1 torch thread per process (the server, our worker, TRL's process; --trl-threads to
change TRL's). A team of 2 threads per process is no faster for models this small and, on 2 cores
shared with anything else, loses badly (OpenMP threads spin waiting for a descheduled peer).

Prints per-step wall time after warm-up (median and mean; TRL: between its on_step_end calls,
ours: between metrics.jsonl lines), the ratio ours / TRL (goal <= 1.0), per-step CPU time (TRL's
process; our worker's plus the server's: on a machine shared with other jobs wall time swells with
the load, CPU time much less), where our step's time goes (metrics.jsonl medians and the server's
/metrics), and both final students' test accuracy, greedy and sampled, by the demo's evaluation,
so speed is never bought with quality.
Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

import torch
import transformers
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from examples.demo import FULL, METHODS, QUICK, ROOT, TEACHER_DIR, common_overrides, initial_student, test_accuracy
from student_worker.train import checkpoint
from student_worker.config import load_config
from student_worker.data.prompts import PromptData
from student_worker.train import trainer as trainer_module
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

# torch and transformers are pinned to ours at run time; these are TRL's own
TRL_PINS = ["trl==1.16.0", "accelerate==1.15.0", "datasets==5.2.0"]
SERVER_THREADS, WORKER_THREADS = 1, 1
LR, BETA, MAX_NEW_TOKENS, TEMPERATURE = 1e-3, 0.5, 10, 1.0


def trl_python(venv: pathlib.Path) -> pathlib.Path:
    """TRL's interpreter, in a virtual environment of its own, made (minutes) when missing or stale."""
    pins = [f"torch=={torch.__version__}", f"transformers=={transformers.__version__}", *TRL_PINS]
    stamp, python = venv / "bench-pins.txt", venv / "bin" / "python"
    if stamp.exists() and stamp.read_text().split() == pins:
        return python
    print(f"installing {' '.join(pins)} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    stamp.write_text("\n".join(pins) + "\n")
    return python


def gkd_config(target: str, seed: int, init: pathlib.Path, steps: int, task: str):
    """The demo's gkd run, strictly on-policy, no evaluation inside the timed loop."""
    preset, extra = METHODS["gkd"]
    return load_config(None, preset, common_overrides(target, seed, task) + extra + [
        f"student.path={init}", f"optim.lr={LR}", f"method.beta={BETA}", f"train.steps={steps}",
        "train.lag=0", "train.eval_every=0", f"student.num_threads={WORKER_THREADS}",
        f"sampling.max_new_tokens={MAX_NEW_TOKENS}", f"sampling.temperature={TEMPERATURE}"])


def diffs(clock: list[float]) -> list[float]:
    return [b - a for a, b in zip(clock, clock[1:])]


def step_stats(run: dict, warmup: int) -> dict:
    """Per-step wall time after warm-up (median, mean) and CPU time (median)."""
    wall, cpu = run["step_s"][warmup:], run["cpu_s"][warmup:]
    return {"median_s": statistics.median(wall), "mean_s": statistics.fmean(wall), "steps_timed": len(wall),
            "cpu_median_s": statistics.median(cpu)}


def run_trl(python: pathlib.Path, cfg, init: pathlib.Path, run_dir: pathlib.Path, threads: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(init)
    data = PromptData(cfg.data, tokenizer, seed=cfg.train.seed)
    batches = [data.batch(step) for step in range(cfg.train.steps)]
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"student": str(init), "teacher": str(TEACHER_DIR), "out": str(run_dir),
            "batches": [[ex.prompt_ids for ex in b] for b in batches],
            "completions": [[ex.completion_ids for ex in b] for b in batches],
            "lr": LR, "beta": BETA, "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE,
            "seed": cfg.train.seed, "threads": threads}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TRL_EXPERIMENTAL_SILENCE="1")
    subprocess.run([str(python), str(ROOT / "bench" / "trl_gkd.py"), str(run_dir / "spec.json")],
                   check=True, env=env, cwd=run_dir)
    clock = json.loads((run_dir / "steps.json").read_text())
    return {"step_s": diffs([clock["started"]] + clock["step_ends"]),
            "cpu_s": diffs([clock["cpu_started"]] + clock["cpu_step_ends"]),
            "generate_s": clock["generate_s"], "model": run_dir / "model"}


def server_counters(http: str) -> dict:
    """Sums of the server's counters and histograms (over labels), from /metrics."""
    text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
    totals: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_clock_per_update(ends: list[float]):
    """This process's CPU time at the end of every update of `train` (wall time is in
    metrics.jsonl; CPU time, unlike wall time, barely moves when the machine is shared)."""
    original = trainer_module.update

    def timed(*args, **kwargs):
        result = original(*args, **kwargs)
        ends.append(time.process_time())
        return result

    trainer_module.update = timed
    try:
        yield
    finally:
        trainer_module.update = original


def run_ours(cfg, run_dir: pathlib.Path, server: TeacherProcess) -> dict:
    before, server_cpu = server_counters(server.http), process_cpu_s(server.proc.pid)
    cpu_ends: list[float] = []
    shutil.rmtree(run_dir, ignore_errors=True)   # starts over: a worker refuses a folder holding a run
    with cpu_clock_per_update(cpu_ends):
        final = train(cfg, run_dir, progress=False)
    after, server_cpu = server_counters(server.http), process_cpu_s(server.proc.pid) - server_cpu
    delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": diffs([0.0] + [x["elapsed_s"] for x in lines]), "lines": lines, "model": final,
            "cpu_s": diffs(cpu_ends), "server_cpu_per_step_s": server_cpu / len(lines),
            "server_forward_s": delta("teacher_forward_seconds_sum") / len(lines),   # per step
            "server_queue_wait_s": delta("teacher_queue_wait_seconds_sum") / max(delta("teacher_queue_wait_seconds_count"), 1)}


def one_seed(out: pathlib.Path, server: TeacherProcess, seed: int, p: dict, steps: int, warmup: int,
             trl_threads: int, python: pathlib.Path) -> dict:
    # a finished initial student of an earlier run in the same OUT is reused (it takes minutes)
    init = checkpoint.latest_checkpoint(out / f"seed{seed}" / "initial") or initial_student(out, server.target, seed, p)
    cfg = gkd_config(server.target, seed, init, steps, p["task"])
    # alternate who goes first, so a drift in the machine's load does not favour one side
    order = ["trl", "ours"] if seed % 2 == 0 else ["ours", "trl"]
    runs = {}
    for side in order:
        print(f"seed {seed}: {side} ({steps} steps)", flush=True)
        runs[side] = (run_trl(python, cfg, init, out / f"seed{seed}" / "trl", trl_threads) if side == "trl"
                      else run_ours(cfg, out / f"seed{seed}" / "ours", server))
    trl, ours = runs["trl"], runs["ours"]
    median = lambda key: statistics.median(x[key] for x in ours["lines"][warmup:])
    result = {
        "seed": seed, "initial": vars(test_accuracy(init, p)),
        "trl": {**step_stats(trl, warmup), "accuracy": vars(test_accuracy(trl["model"], p)),
                "generate_median_s": statistics.median(trl["generate_s"][warmup:])},
        "ours": {**step_stats(ours, warmup), "accuracy": vars(test_accuracy(ours["model"], p)),
                 "rollout_median_s": median("rollout_s"), "score_median_s": median("teacher_latency_s"),
                 "update_median_s": median("update_s"), "server_forward_per_step_s": ours["server_forward_s"],
                 "server_queue_wait_s": ours["server_queue_wait_s"],
                 "server_cpu_per_step_s": ours["server_cpu_per_step_s"]},
    }
    # CPU: the worker's median plus the server's mean per step (lag 0: the two take turns)
    result["ours"]["cpu_with_server_s"] = result["ours"]["cpu_median_s"] + ours["server_cpu_per_step_s"]
    result["ratio_cpu"] = result["ours"]["cpu_with_server_s"] / result["trl"]["cpu_median_s"]
    result["ratio_median"] = result["ours"]["median_s"] / result["trl"]["median_s"]
    result["ratio_mean"] = result["ours"]["mean_s"] / result["trl"]["mean_s"]
    return result


def table(r: dict) -> str:
    lines = [f"## ours (gkd, lag 0, teacher server) vs TRL {TRL_PINS[0].split('==')[1]} GKDTrainer "
             f"(teacher in process): {r['task']}, {r['steps']} steps of {r['batch']}, warm-up {r['warmup']} steps not timed",
             "", f"threads: server {SERVER_THREADS}, our worker {WORKER_THREADS}, TRL {r['trl_threads']}; "
             f"load average before / after: {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} (2 cores)",
             "", "| seed | TRL s/step median (mean) | ours s/step median (mean) | ours / TRL median (mean) | "
             "CPU s/step TRL / ours (+ server) | ours / TRL CPU | "
             "test sampled TRL / ours / initial | test greedy TRL / ours / initial |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in r["seeds"]:
        t, o, i = s["trl"], s["ours"], s["initial"]
        lines.append(f"| {s['seed']} | {t['median_s']:.4f} ({t['mean_s']:.4f}) | {o['median_s']:.4f} ({o['mean_s']:.4f}) | "
                     f"**{s['ratio_median']:.2f}** ({s['ratio_mean']:.2f}) | "
                     f"{t['cpu_median_s']:.4f} / {o['cpu_with_server_s']:.4f} | {s['ratio_cpu']:.2f} | "
                     f"{t['accuracy']['sampled']:.3f} / {o['accuracy']['sampled']:.3f} / {i['sampled']:.3f} | "
                     f"{t['accuracy']['greedy']:.3f} / {o['accuracy']['greedy']:.3f} / {i['greedy']:.3f} |")
    lines += ["", "where a step goes (medians, s): ours: sampling | Score call (server forward passes) | update; "
              "TRL: generate | rest (teacher forward, loss, update)"]
    for s in r["seeds"]:
        t, o = s["trl"], s["ours"]
        lines.append(f"- seed {s['seed']}: ours {o['rollout_median_s']:.4f} | {o['score_median_s']:.4f} "
                     f"({o['server_forward_per_step_s']:.4f}) | {o['update_median_s']:.4f}; "
                     f"TRL {t['generate_median_s']:.4f} | {t['median_s'] - t['generate_median_s']:.4f}")
    ratios = [s["ratio_median"] for s in r["seeds"]]
    lines += ["", f"ours / TRL per-step time (median; goal <= 1.0): **{statistics.fmean(ratios):.2f}**"
              + (f" (seeds: {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: the demo's)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the initial student")
    parser.add_argument("--quick", action="store_true", help="the demo's quick settings (60 steps)")
    parser.add_argument("--trl-threads", type=int, default=1)
    parser.add_argument("--task", choices=["digsum", "digsum-one-answer"], default="digsum",
                        help="digsum-one-answer: does TRL's GKDTrainer drop from the one-answer student too?")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("vs-trl-output"))
    cache = pathlib.Path(os.environ.get("DISTILL_CACHE") or pathlib.Path.home() / ".cache" / "distill")
    parser.add_argument("--venv", type=pathlib.Path, default=cache / "trl-venv", help="TRL's virtual environment")
    args = parser.parse_args()
    p = dict(QUICK if args.quick else FULL, task=args.task)
    steps = args.steps or p["steps"]
    warmup = min(10, steps // 6)
    torch.set_num_threads(WORKER_THREADS)
    transformers.utils.logging.disable_progress_bar()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    python = trl_python(args.venv.resolve())
    started = time.monotonic()
    results = {"task": args.task, "steps": steps, "batch": 128, "warmup": warmup, "trl_threads": args.trl_threads,
               "server_threads": SERVER_THREADS, "worker_threads": WORKER_THREADS, "load_before": os.getloadavg()}
    server = TeacherProcess(TEACHER_DIR, "--max-wait-ms", "1", "--num-threads", str(SERVER_THREADS))
    try:
        server.wait_serving()
        results["seeds"] = [one_seed(args.out, server, int(s), p, steps, warmup, args.trl_threads, python)
                            for s in args.seeds.split(",") if s.strip()]
    finally:
        server.terminate()
    results["load_after"], results["total_s"] = os.getloadavg(), time.monotonic() - started
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (args.out / "results.md").write_text(text)
    print("\n" + text)
    print(f"wrote {args.out}/results.json, results.md in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()

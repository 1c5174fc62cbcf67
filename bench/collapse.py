"""Why teacher-based methods collapse where the students' data shows one way to answer (issue 30).

    .venv/bin/python -m bench.collapse                       # digsum-one-answer, seeds 0,1: ~12 min on 2 cores
    TASKS=digsum-one-answer,ringwalk-canonical SEEDS=0 .venv/bin/python -m bench.collapse

On `digsum-one-answer` and `ringwalk-canonical` the initial student learns the data's one answer
per prompt (sft), and every method that trains toward the teacher, on- or off-policy, ends far
below where it started. Each experiment here changes one thing, from the same initial students
(examples/demo.py's recipe; dev split only, seeds the demo tables do not report):

- optimisation: `gkd` at the demo's learning rate (1e-3) and at 1e-4, for the demo's steps and 4x
  as many (does the drop recover, or come from too large steps?);
- capacity: the same with a student of the teacher's size (2 layers of width 64 instead of 1 of 32);
- what the teacher asks for: the teacher's own data (many valid answers per prompt: the policy
  a teacher-based method trains toward) learnt by sft from scratch, by each student size, for as
  many steps as the initial student plus a method run get. How close a student can come to the
  teacher's policy bounds where training toward it can end.

Prints each run's dev accuracy (sampled, temperature 1) at the start, its best and its last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor

from examples import demo
from examples.train_demo_teacher import STUDENT, TEACHER, write_config_folder
from student_worker.config import load_config
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

SIZES = {"small": STUDENT, "large": TEACHER}
TEACHER_DATA = {"digsum-one-answer": "digsum", "ringwalk-canonical": "ringwalk"}
GKD = ["method.divergence=jsd", "method.beta=0.5", "method.student_fraction=1.0"]
STEPS = 300


def dev_curve(run_dir: pathlib.Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["dev_sampled"] for x in lines if "dev_sampled" in x]


def one_task(task: str, seed: int, size: str, target: str, out: pathlib.Path) -> dict[str, list[float]]:
    settings = demo.TASK_SETTINGS[task]
    p = dict(demo.FULL, task=task)
    positions = settings.get("positions", 32)
    config = write_config_folder(out / f"config-{size}", positions, **SIZES[size])
    # the initial student, as the demo makes it, from this size's random weights
    init_cfg = load_config(None, "sft", demo.common_overrides(target, seed, task) + [
        f"student.path={config}", "student.init=config", "optim.lr=3e-3", "train.steps=3000",
        "train.eval_every=50", f"train.eval_prompts={p['eval_prompts']}",
        f"train.stop_at_accuracy={settings['init_target']}"])
    init = train(init_cfg, out / "initial", progress=False)
    init_steps = int(init.name.split("-")[1])
    curves = {"initial (sft on the one answer)": dev_curve(out / "initial")}
    runs = {"sft": ("sft", []), "gkd": ("gkd", GKD), "gkd lr 1e-4": ("gkd", GKD + ["optim.lr=1e-4"]),
            f"gkd {4 * STEPS} steps": ("gkd", GKD + [f"train.steps={4 * STEPS}"])}
    for name, (preset, extra) in runs.items():
        cfg = load_config(None, preset, demo.common_overrides(target, seed, task) + [
            f"student.path={init}", "optim.lr=1e-3", f"train.steps={STEPS}", "train.eval_every=50",
            f"train.eval_prompts={p['eval_prompts']}"] + extra)
        curves[name] = dev_curve(train(cfg, out / name.replace(" ", "_"), progress=False).parent.parent)
    # the teacher's policy learnt directly: its data, sft from random weights
    cfg = load_config(None, "sft", demo.common_overrides(target, seed, task) + [
        f"student.path={config}", "student.init=config", "optim.lr=3e-3", f"train.steps={init_steps + STEPS}",
        "train.eval_every=50", f"train.eval_prompts={p['eval_prompts']}", f"data.source={TEACHER_DATA[task]}"])
    curves["sft on the teacher's data, from scratch"] = dev_curve(
        train(cfg, out / "teacher_data", progress=False).parent.parent)
    return curves


def run(args: tuple) -> tuple:
    task, seed, size, target, out = args
    demo._worker_init()
    return args[:3], one_task(task, seed, size, target, pathlib.Path(out))


def main() -> None:
    tasks = os.environ.get("TASKS", "digsum-one-answer").split(",")
    seeds = [int(s) for s in os.environ.get("SEEDS", "0,1").split(",")]
    demo._worker_init()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            server = TeacherProcess(demo.TASK_SETTINGS[task]["teacher"], "--max-wait-ms", "1", start_timeout=600)
            try:
                server.wait_serving()
                jobs = [(task, seed, size, server.target, f"{tmp}/{task}-{seed}-{size}")
                        for seed in seeds for size in SIZES]
                with ProcessPoolExecutor(demo.PARALLEL, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=demo._worker_init) as pool:
                    for key, curves in pool.map(run, jobs):
                        results[key] = curves
                        print(f"{key[0]} seed {key[1]} {key[2]} student:", flush=True)
                        for name, c in curves.items():
                            print(f"  {name}: start {c[0]:.3f}, best {max(c):.3f}, last {c[-1]:.3f}", flush=True)
            finally:
                server.terminate()
    print("\ndev accuracy (sampled), mean over seeds: start / best / last")
    for task in tasks:
        for size in SIZES:
            print(f"\n{task}, {size} student")
            for name in results[task, seeds[0], size]:
                c = [results[task, s, size][name] for s in seeds]
                print(f"  {name}: " + " / ".join(f"{statistics.mean(x):.3f}" for x in
                                                 zip(*[(v[0], max(v), v[-1]) for v in c])))


if __name__ == "__main__":
    main()

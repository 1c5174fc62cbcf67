"""Paired method variants on the digsum demo, for tuning (issue 18): where does on-policy pay?

    VARIANTS='{"gkd_b09": ["gkd", ["method.divergence=jsd", "method.beta=0.9"]],
               "kd_jsd_b09": ["kd", ["method.divergence=jsd", "method.beta=0.9", "train.lag=1"]]}' \
    SEEDS=0,1 STEPS=60 BASE=kd_jsd_b09 OUT=/tmp/sweep .venv/bin/python -m bench.digsum_sweep

Each variant is (preset, overrides) trained from each seed's initial student exactly as
examples/demo.py trains its methods (INITS='{"0": "checkpoint dir"}' reuses initial students
from an earlier run: training them is most of the cost). Prints each variant's sampled test
accuracy and its paired difference to BASE, 95% bootstrap interval, and its dev curve (the
number to tune on). TASK picks the demo's task (ringwalk-canonical included), FULL=1 the demo's
full evaluation settings instead of its quick ones, TEST_PROMPTS a shorter test. Tune on seeds
you will not report (the demo's claims come from others).
"""

import json
import multiprocessing
import os
import pathlib
from concurrent.futures import ProcessPoolExecutor, as_completed

from examples import demo
from student_worker.tools.stats import describe, paired_bootstrap
from teacher_server.process import TeacherProcess


def main() -> None:
    variants = json.loads(os.environ["VARIANTS"])
    seeds = [int(s) for s in os.environ["SEEDS"].split(",")]
    out = pathlib.Path(os.environ["OUT"])
    base = demo.FULL if os.environ.get("FULL") else demo.QUICK   # FULL=1: the demo's evaluation settings
    p = dict(base, steps=int(os.environ.get("STEPS", base["steps"])), task=os.environ.get("TASK", demo.TASK),
             test_prompts=int(os.environ.get("TEST_PROMPTS", base["test_prompts"])))
    demo._worker_init()
    server = TeacherProcess(demo.TASK_SETTINGS[p["task"]]["teacher"], "--max-wait-ms", "1", start_timeout=600)
    results = {}
    try:
        server.wait_serving()
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(demo.PARALLEL, mp_context=spawn, initializer=demo._worker_init) as pool:
            if os.environ.get("INITS"):
                inits = {int(s): path for s, path in json.loads(os.environ["INITS"]).items()}
            else:
                prepared = [pool.submit(demo.prepare_seed, out, server.target, s, p) for s in seeds]
                inits = {r["seed"]: r["init"] for r in (f.result() for f in prepared)}
            runs = [pool.submit(demo.run_method, out, server.target, s, name, pathlib.Path(inits[s]), p, tuple(v))
                    for s in seeds for name, v in variants.items()]
            for done in as_completed(runs):
                r = done.result()
                results[r["seed"], r["name"]] = r
                dev = " ".join(f"{step}:{acc:.2f}" for step, acc in r["curve"])
                print(f"seed {r['seed']} {r['name']}: sampled {r['accuracy']['sampled']:.3f}; dev {dev}", flush=True)
    finally:
        server.terminate()
    correct = {n: [[int(c) for c in results[s, n]["accuracy"]["sampled_correct"]] for s in seeds] for n in variants}
    base = os.environ.get("BASE", next(iter(variants)))
    for name in variants:
        i = paired_bootstrap(correct[name])
        versus = "" if name == base else "; " + describe(name, base, paired_bootstrap(correct[name], correct[base]))
        print(f"{name}: {i.mean:.3f} [{i.low:.3f}, {i.high:.3f}]{versus}")


if __name__ == "__main__":
    main()

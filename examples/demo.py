"""The demo: distill the shipped digsum teacher into a small student with every method, side by side.

    make demo                 # 3 seeds, every method, under 10 minutes on 2 CPU cores
    make demo QUICK=1         # 1 seed, short runs (under 3 minutes)
    make demo SEEDS=4,5,6 OUT=elsewhere

What happens, all on 127.0.0.1 through the real parts:
1. `python -m teacher_server` starts on examples/demo-teacher/ (a 0.1M-parameter model).
2. Per seed, the initial student: the config at examples/demo-student/ with seeded random weights,
   trained by the student worker (sft on the task's data) until its sampled dev accuracy reaches
   a target, so that every seed starts from a comparable student.
3. Per seed and method, the student worker trains a copy of that initial student for the same
   number of steps against the teacher server, evaluating on the dev split as it goes.
4. Every final student is scored on the same 2,500 test draws (the test split's distinct prompts,
   53 for digsum and 90 for ringwalk, drawn repeatedly): greedy and sampled (temperature 1, the
   same evaluation seed for all) accuracy, and diversity (distinct correct answers per prompt over
   8 samples).
5. Every method is compared with every baseline as a paired difference (same seeds, so the same
   initial students; same test draws), with a 95% interval from a bootstrap over seeds and then
   distinct test prompts, each with all its draws (student_worker.tools.stats). The text calls a
   difference a win only when its interval excludes 0, and a tie otherwise.
Writes OUT/results.json, OUT/results.md (also printed) and OUT/accuracy.png. `--publish` (make demo
PUBLISH=1) also keeps the numbers as docs/results/TASK.json, from which `make docs` writes the
tables of docs/results/ and README.md (this module's results_table and headline_table).
`--from-results OUT/results.json` trains nothing and makes the intervals, tables and plot again.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
import transformers
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker.config import load_config
from student_worker.tasks import TASKS
from student_worker.tools import generate_file, score_file
from student_worker.tools.stats import Interval, describe, paired_bootstrap
from student_worker.train.checkpoint import checkpoint_dir
from student_worker.train.evaluate import evaluate
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
TASK = "digsum"

# method name in the table -> (preset, overrides). Same steps, batch and learning rate for all.
METHODS = {
    "sft": ("sft", []),
    "seqkd": ("seqkd", []),
    # data completions do not depend on the student: lag=1 (teacher scores the next batch during
    # this update) gives the same numbers, sooner
    "kd": ("kd", ["method.divergence=forward_kl", "train.lag=1"]),
    "kd_jsd": ("kd", ["method.divergence=jsd", "method.beta=0.5", "train.lag=1"]),  # control: gkd's loss, no sampling
    "gkd": ("gkd", ["method.divergence=jsd", "method.beta=0.5", "method.student_fraction=1.0"]),
    # speculative KD: interleaved drafts; gkd's divergence, so only the data source differs
    "skd": ("skd", ["method.divergence=jsd", "method.beta=0.5", "method.draft_tokens=8", "method.skd_top_k=8"]),
    # offline, no teacher while training: the teacher's outputs cached once (build_caches)
    "seqkd_cached": ("sft", ["data.source={generated}"]),   # sft on the best of 4 teacher samples per prompt
    "kd_cached": ("kd", ["data.source={scored}", "method.divergence=forward_kl", "train.lag=1"]),  # kd's, from the cache
}
OFFLINE = ("seqkd_cached", "kd_cached")   # trained with teacher=null
ON_POLICY = ("gkd", "onpolicy-rkl", "skd")   # trained on the student's own samples; the rest are off-policy
# 2,500 test prompts: one sampled accuracy near 0.7 has a standard error of 0.9 points
FULL = dict(steps=300, eval_every=50, eval_prompts=256, test_prompts=2500, task=TASK)
QUICK = dict(steps=60, eval_every=30, eval_prompts=128, test_prompts=2500, task=TASK)
# per task: its teacher, the students' architecture (digsum: examples/demo-student's config; None: the
# 1-layer width-32 student of examples/train_demo_teacher.py with room for `positions`), answer
# length, the initial students' sampled dev accuracy and, where it differs from FULL, the steps
TASK_SETTINGS = {
    "digsum": dict(teacher=ROOT / "examples" / "demo-teacher", student=ROOT / "examples" / "demo-student",
                   new_tokens=10, init_target=0.45),
    "digsum-one-answer": dict(teacher=ROOT / "examples" / "demo-teacher",
                              student=ROOT / "examples" / "demo-student", new_tokens=10, init_target=0.45),
    # the long-horizon task (student_worker/tasks/ringwalk.py); settings chosen on seeds 0-2, dev split
    "ringwalk-canonical": dict(teacher=ROOT / "examples" / "ringwalk-teacher", student=None, positions=64,
                               new_tokens=48, init_target=0.08),
}
TEACHER_DIR = TASK_SETTINGS[TASK]["teacher"]
PARALLEL = 2   # worker processes at once: the teacher (one thread) is idle most of a step


TRAIN_EXAMPLES = 50000   # data.num_examples of the task's training split


def common_overrides(target: str | None, seed: int, task: str = TASK) -> list[str]:
    """target None: a run without a teacher (teacher=null)."""
    return [f"teacher.target={target}" if target else "teacher=null", f"data.source={task}",
            "data.batch_size=128", f"data.num_examples={TRAIN_EXAMPLES}",
            f"sampling.max_new_tokens={TASK_SETTINGS[task]['new_tokens']}",
            "teacher.top_k=15", "student.num_threads=1", f"train.seed={seed}", "train.eval_acceptance_prompts=0"]


def build_caches(out: pathlib.Path, target: str, task: str, examples: int) -> dict:
    """The teacher's outputs for the offline rows, made once with the commands users run:
    distill-generate (the best of 4 samples per training prompt by the task's check) and
    distill-score (the teacher's top-15 on the training data kd reads), each for as many
    training examples as a run draws (steps x batch: one epoch of the cache, where the online
    methods draw as many from a pool of TRAIN_EXAMPLES). Kept in OUT: a rerun with the same
    settings reuses them."""
    generated, scored = out / f"cache-{task}-{examples}-generated", out / f"cache-{task}-{examples}-scored"
    settings = TASK_SETTINGS[task]
    teacher = ["--teacher", target, "--tokenizer", str(settings["teacher"]), "--num-examples", str(examples)]
    with contextlib.redirect_stdout(io.StringIO()):   # their JSON summaries
        generate_file.main([task, str(generated), *teacher, "--num-samples", "4", "--best-of-task", task,
                            "--max-new-tokens", str(settings["new_tokens"]), "--batch-prompts", "128"])
        score_file.main([task, str(scored), *teacher, "--top-k", "15", "--batch-sequences", "128"])
    return {"generated": str(generated), "scored": str(scored)}


def student_config(out: pathlib.Path, task: str) -> pathlib.Path:
    """The folder whose config.json the initial students of `task` are built from."""
    settings = TASK_SETTINGS[task]
    if settings["student"] is not None:
        return settings["student"]
    from examples.train_demo_teacher import STUDENT, write_config_folder

    return write_config_folder(out / f"student-config-{task}", settings["positions"], **STUDENT)


def initial_student(out: pathlib.Path, target: str, seed: int, p: dict) -> pathlib.Path:
    """sft from seeded random weights until sampled dev accuracy reaches the target."""
    cfg = load_config(None, "sft", common_overrides(target, seed, p["task"]) + [
        f"student.path={student_config(out, p['task'])}", "student.init=config", "optim.lr=3e-3",
        "train.steps=3000", "train.eval_every=50", f"train.eval_prompts={p['eval_prompts']}",
        f"train.stop_at_accuracy={TASK_SETTINGS[p['task']]['init_target']}"])
    return train(cfg, out / f"seed{seed}" / "initial", progress=False)


def run_method(out: pathlib.Path, target: str, seed: int, name: str, init: pathlib.Path, p: dict,
               method: tuple[str, list[str]] | None = None) -> dict:
    """One method (METHODS[name], or `method` = (preset, overrides) for a variant under that name)
    from the seed's initial student; returns its test accuracy, curve and costs.

    The student kept is the checkpoint with the best sampled dev accuracy (checked every
    eval_every steps), the same rule for every method: on-policy losses spike now and then (a
    rare odd sample), and a spike just before the last step must not decide the number.
    """
    preset, extra = method or METHODS[name]
    extra = [option.format(**p.get("caches", {})) for option in extra]
    # the method's own options last: a variant may change the learning rate or the steps
    cfg = load_config(None, preset, common_overrides(None if name in OFFLINE else target, seed, p["task"]) + [
        f"student.path={init}", "optim.lr=1e-3", f"train.steps={p['steps']}",
        f"train.eval_every={p['eval_every']}", f"train.save_every={p['eval_every']}",
        f"train.eval_prompts={p['eval_prompts']}"] + extra)
    run_dir = out / f"seed{seed}" / name
    start = time.monotonic()
    train(cfg, run_dir, progress=False)
    seconds = time.monotonic() - start
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(x["step"], x["dev_sampled"]) for x in lines if "dev_sampled" in x]
    best_step = max(curve[1:], key=lambda point: point[1])[0]   # step 0 is the initial student
    acc = test_accuracy(checkpoint_dir(run_dir, best_step), p)
    return {"seed": seed, "name": name, "wall_seconds": seconds, "accuracy": _scores(acc), "curve": curve,
            "best_step": best_step,
            "teacher_tokens": sum(x.get("completion_tokens", 0) for x in lines)
            if cfg.teacher is not None and preset != "sft" else 0}


def prepare_seed(out: pathlib.Path, target: str, seed: int, p: dict) -> dict:
    init = initial_student(out, target, seed, p)
    return {"seed": seed, "init": str(init), "accuracy": _scores(test_accuracy(init, p))}


def _scores(acc) -> dict:
    """The means, and per test prompt whether the sampled answer was right, as a '0'/'1' string
    (compact in results.json; what the paired bootstrap resamples)."""
    return {"greedy": acc.greedy, "sampled": acc.sampled, "diversity": acc.diversity,
            "sampled_correct": "".join(str(int(ok)) for ok in acc.sampled_correct)}


def test_accuracy(model_dir: pathlib.Path, p: dict):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return evaluate(model, AutoTokenizer.from_pretrained(model_dir), TASKS[p["task"]], "test",
                    num_prompts=p["test_prompts"], max_new_tokens=TASK_SETTINGS[p["task"]]["new_tokens"])


def _worker_init() -> None:
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("OUT") or "demo-output"))
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    parser.add_argument("--seeds", default=os.environ.get("SEEDS") or "")
    parser.add_argument("--task", choices=sorted(TASK_SETTINGS), default=os.environ.get("TASK") or TASK,
                        help="digsum-one-answer: the training data (sft, kd) holds one reference answer per sum; "
                        "ringwalk-canonical: the long-horizon task, one canonical walk per prompt")
    parser.add_argument("--publish", action="store_true", default=os.environ.get("PUBLISH", "") not in ("", "0"),
                        help="keep the numbers as docs/results/TASK.json and rewrite the tables made from them")
    parser.add_argument("--from-results", type=pathlib.Path, metavar="RESULTS_JSON",
                        help="train nothing: the intervals, tables and plot again from an earlier run's results.json")
    args = parser.parse_args()
    if args.from_results:
        args.out.mkdir(parents=True, exist_ok=True)
        return report(json.loads(args.from_results.read_text()), args.out, args.publish)
    p = dict(QUICK if args.quick else FULL, task=args.task)
    p.update({k: v for k, v in TASK_SETTINGS[args.task].items() if k in p})   # a task's own steps
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or ([0] if args.quick else [0, 1, 2])
    _worker_init()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:   # the demo starts over: a worker refuses a folder that holds another run
        shutil.rmtree(args.out / f"seed{seed}", ignore_errors=True)
    started = time.monotonic()
    results = {"task": p["task"], "seeds": seeds, "steps": p["steps"], "eval_every": p["eval_every"],
               "quick": args.quick, "test_prompts": p["test_prompts"],
               "interval": "95% percentile bootstrap, paired: resample seeds, then each seed's test prompts",
               "initial": {"greedy": [], "sampled": [], "diversity": [], "sampled_correct": []},
               "methods": {m: {"greedy": [], "sampled": [], "diversity": [], "sampled_correct": [],
                               "teacher_tokens": 0, "wall_seconds": 0.0, "curves": [], "best_steps": []}
                           for m in METHODS}}
    # a generous start timeout: on a busy shared CPU importing torch alone can take minutes
    teacher_dir = TASK_SETTINGS[args.task]["teacher"]
    server = TeacherProcess(teacher_dir, "--max-wait-ms", "1", start_timeout=600)
    try:
        server.wait_serving()
        acc = test_accuracy(teacher_dir, p)
        results["teacher"] = {"greedy": acc.greedy, "sampled": acc.sampled, "diversity": acc.diversity}
        cached = time.monotonic()
        p["caches"] = build_caches(args.out, server.target, p["task"], p["steps"] * 128)
        results["cache_seconds"] = time.monotonic() - cached
        bar = tqdm(total=len(seeds) * (1 + len(METHODS)), desc="demo", unit="run", dynamic_ncols=True)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(PARALLEL, mp_context=spawn, initializer=_worker_init) as pool:
            inits = {}
            for done in as_completed([pool.submit(prepare_seed, args.out, server.target, s, p) for s in seeds]):
                r = done.result()
                inits[r["seed"]] = r
                bar.set_postfix_str(f"initial student of seed {r['seed']} ready")
                bar.update(1)
            runs = [pool.submit(run_method, args.out, server.target, seed, name, pathlib.Path(inits[seed]["init"]), p)
                    for seed in seeds for name in METHODS]
            finished = {}
            for done in as_completed(runs):
                r = done.result()
                finished[r["seed"], r["name"]] = r
                bar.set_postfix_str(f"seed {r['seed']}: {r['name']} done")
                bar.update(1)
        bar.close()
    finally:
        server.terminate()
    for seed in seeds:   # in seed order, whatever order the runs finished in
        for key in ("greedy", "sampled", "diversity", "sampled_correct"):
            results["initial"][key].append(inits[seed]["accuracy"][key])
        for name in METHODS:
            r, entry = finished[seed, name], results["methods"][name]
            for key in ("greedy", "sampled", "diversity", "sampled_correct"):
                entry[key].append(r["accuracy"][key])
            entry["teacher_tokens"] += r["teacher_tokens"]
            entry["wall_seconds"] += r["wall_seconds"]
            entry["curves"].append(r["curve"])
            entry["best_steps"].append(r["best_step"])
    results["total_seconds"] = time.monotonic() - started
    report(results, args.out, args.publish)


def report(results: dict, out: pathlib.Path, publish: bool) -> None:
    """Intervals, OUT/results.json, results.md (printed) and accuracy.png; with `publish`, the
    numbers kept as docs/results/TASK.json and the tables made from them rewritten."""
    add_intervals(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    (out / "results.md").write_text(table)
    print("\n" + table)
    plot(results, out / "accuracy.png")
    print(f"wrote {out}/results.json, results.md, accuracy.png (the run took {results['total_seconds']:.0f} s)")
    if publish:
        from scripts.gen_docs import publish as keep

        keep(results["task"], summary(results))


def summary(r: dict) -> dict:
    """results.json without what only the intervals and the plot read (each prompt's correctness,
    the dev curves): what the published tables show, small enough to keep in the repository."""
    def lean(entry: dict) -> dict:
        return {key: value for key, value in entry.items() if key not in ("sampled_correct", "curves")}
    return {**r, "initial": lean(r["initial"]), "methods": {n: lean(m) for n, m in r["methods"].items()}}


def _correct_SN(model: dict) -> list[list[int]]:
    return [[int(c) for c in row] for row in model["sampled_correct"]]


def test_prompt_ids(task: str, n: int) -> list[int]:
    """Which distinct prompt each of the n test draws is: a task's test split has fewer distinct
    prompts than draws (digsum 53, ringwalk 90), and the intervals resample the distinct ones."""
    prompts = [e["prompt"] for e in TASKS[task].examples("test", n)]
    index = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
    return [index[prompt] for prompt in prompts]


def add_intervals(r: dict) -> None:
    """Each model's sampled accuracy with its interval, every method against every baseline (the
    initial student and each method listed before it) as a paired difference, and the headline:
    the best on-policy method against the best off-policy one, the kd_jsd control included.
    Bootstrap: seeds, then within each seed the distinct test prompts with all their draws."""
    models = {"initial": r["initial"], **r["methods"]}
    clusters = test_prompt_ids(r["task"], r["test_prompts"])
    r["distinct_test_prompts"] = len(set(clusters))
    r["interval"] = "95% percentile bootstrap, paired: resample seeds, then each seed's distinct test prompts"
    bootstrap = functools.partial(paired_bootstrap, clusters_N=clusters)
    for m in models.values():
        m["sampled_interval"] = bootstrap(_correct_SN(m)).as_dict()
    names = list(models)
    r["comparisons"] = [
        {"method": a, "baseline": b, **bootstrap(_correct_SN(models[a]), _correct_SN(models[b])).as_dict()}
        for i, a in enumerate(names) for b in names[:i]]
    on = [n for n in r["methods"] if n in ON_POLICY]
    off = [n for n in r["methods"] if n not in ON_POLICY]
    if on and off:
        best_on = max(on, key=lambda n: r["methods"][n]["sampled_interval"]["mean"])
        best_off = max(off, key=lambda n: r["methods"][n]["sampled_interval"]["mean"])
        d = bootstrap(_correct_SN(models[best_on]), _correct_SN(models[best_off]))
        r["headline"] = {"on_policy": best_on, "off_policy": best_off, **d.as_dict(),
                         "on_policy_wins": d.low > 0,
                         "text": describe(f"the best on-policy method ({best_on})",
                                          f"the best off-policy method ({best_off})", d)}


def _comparison(r: dict, a: str, b: str) -> dict:
    """a minus b, whichever of the two results.json lists first."""
    for c in r["comparisons"]:
        if (c["method"], c["baseline"]) == (a, b):
            return c
        if (c["method"], c["baseline"]) == (b, a):
            return {**c, "method": a, "baseline": b, "mean": -c["mean"], "low": -c["high"], "high": -c["low"]}
    raise KeyError(f"no comparison of {a} and {b}")


def _ci(c: dict) -> str:
    text = f"{100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
    return f"**{text}**" if c["low"] > 0 or c["high"] < 0 else text


def headline_table(r: dict) -> str:
    """Each model's sampled accuracy with its interval, the best mean in bold (README.md)."""
    models = {"initial student": r["initial"], **{f"`{n}`": m for n, m in r["methods"].items()}}
    best = max(m["sampled_interval"]["mean"] for m in r["methods"].values())
    rows = []
    for name, m in models.items():
        i = m["sampled_interval"]
        mean = f"{i['mean']:.3f}"
        rows.append(f"| {name} | {f'**{mean}**' if i['mean'] == best else mean} [{i['low']:.3f}, {i['high']:.3f}] |")
    seeds = ", ".join(map(str, r["seeds"]))
    return "\n".join([f"| method | sampled accuracy [95% CI], seeds {seeds} |", "| --- | --- |", *rows, ""])


def results_table(r: dict, heading: bool = True) -> str:
    seeds = ", ".join(map(str, r["seeds"]))
    n_prompts = r["test_prompts"]
    title = (f"## {r['task']}: distilling a 0.1M-parameter teacher into a 14k-parameter student "
             f"({r['steps']} steps per method)")
    lines = [
        *([title, ""] if heading else []),
        (f"Test split, {n_prompts:,} draws of {r['distinct_test_prompts']} distinct prompts, seeds {seeds}. "
         "Sampled = temperature 1, with 95% interval (bootstrap over seeds and distinct prompts)"
         if "distinct_test_prompts" in r else   # results from before the intervals knew the prompts
         f"Test split, {n_prompts:,} prompts, seeds {seeds}. Sampled = temperature 1, with 95% interval "
         "(bootstrap over seeds and prompts)") + "; greedy and diversity: mean over seeds. Diversity = distinct "
        "correct answers per prompt in 8 samples. Each method's student is its checkpoint with the best "
        f"sampled dev accuracy (checked every {r['eval_every']} steps, same rule for all).",
        "",
        "| model | sampled [95% CI] | sampled per seed | greedy | diversity | teacher tokens | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| teacher | {r['teacher']['sampled']:.3f} | | {r['teacher']['greedy']:.3f} | "
        f"{r['teacher']['diversity']:.2f} | | |",
    ]
    models = {"initial student": r["initial"], **r["methods"]}
    for name, m in models.items():
        i = m["sampled_interval"]
        lines.append(f"| {name} | {i['mean']:.3f} [{i['low']:.3f}, {i['high']:.3f}] | "
                     f"{' / '.join(f'{v:.3f}' for v in m['sampled'])} | {statistics.mean(m['greedy']):.3f} | "
                     f"{statistics.mean(m['diversity']):.2f} | {m.get('teacher_tokens', 0):,} | "
                     f"{m.get('wall_seconds', 0):.0f} |")
    if "cache_seconds" in r:
        lines += ["", f"`seqkd_cached` and `kd_cached` train with no teacher, from the teacher's outputs "
                  f"cached once before any method ran ({r['cache_seconds']:.0f} s for both caches: "
                  "`distill-generate` best of 4 samples per prompt by the task's check, `distill-score` "
                  "top-15 on the training data); their teacher tokens are 0."]
    keys = ["initial"] + list(r["methods"])
    lines += ["", "Row minus column, sampled accuracy in points, paired (same seeds, same prompts), "
              "95% CI; **bold** where the interval excludes 0, otherwise the two tie.", "",
              "| method | " + " | ".join(keys[:-1]) + " |", "| --- " * len(keys) + "|"]
    for i, a in enumerate(keys[1:], start=1):
        cells = [_ci(_comparison(r, a, b)) for b in keys[:i]] + [""] * (len(keys) - 1 - i)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    on = [n for n in r["methods"] if n in ON_POLICY]
    off = [n for n in r["methods"] if n not in ON_POLICY]
    lines += [""] + [f"- {describe(a, b, Interval.from_dict(_comparison(r, a, b)))}" for a in on for b in off]
    if "headline" in r:
        h = r["headline"]
        verdict = ("On-policy training pays here." if h["on_policy_wins"] else
                   "On-policy training does not beat off-policy training here: the interval does not "
                   "exclude 0 or lies below it.")
        if len(r["seeds"]) == 1:   # then the intervals cannot see how much a new seed would move things
            verdict += (" One seed: the intervals cover the test prompts only, not seed-to-seed variation; "
                        "claims need SEEDS with at least 5 seeds not used for tuning.")
        lines += ["", f"**Headline**: {h['text']}. {verdict}"]
    return "\n".join(lines + [""])


def plot(r: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, diffs) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    for name, m in r["methods"].items():
        steps = [s for s, _ in m["curves"][0]]
        values = [[v for _, v in curve] for curve in m["curves"]]
        per_step = list(zip(*values))
        mean = [statistics.mean(v) for v in per_step]
        line, = curves.plot(steps, mean, label=name, linewidth=2 if name in ON_POLICY else 1.2)
        if len(values) > 1:
            curves.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step],
                                color=line.get_color(), alpha=0.15)
    curves.axhline(r["teacher"]["sampled"], color="black", linestyle="--", linewidth=1, label="teacher")
    curves.set_xlabel("gradient step")
    curves.set_ylabel("dev accuracy, sampled at temperature 1")
    curves.set_title(f"{r['task']} dev curves, {len(r['seeds'])} seed(s): mean line, min-max band")
    curves.legend(loc="best", ncol=3, fontsize="small", framealpha=0.6)
    curves.grid(alpha=0.3)

    rows = [c for c in r["comparisons"] if c["method"] in ON_POLICY] or r["comparisons"]
    ys = range(len(rows))
    for y, c in zip(ys, rows):
        color = "tab:green" if c["low"] > 0 else "tab:red" if c["high"] < 0 else "tab:gray"
        diffs.errorbar(100 * c["mean"], y, xerr=[[100 * (c["mean"] - c["low"])], [100 * (c["high"] - c["mean"])]],
                       fmt="o", color=color, capsize=3)
    diffs.axvline(0, color="black", linewidth=1)
    diffs.set_yticks(list(ys), [f"{c['method']} - {c['baseline']}" for c in rows], fontsize="small")
    diffs.invert_yaxis()
    diffs.set_xlabel("paired difference in test accuracy (sampled), points, 95% CI")
    diffs.set_title(f"test split, {r['test_prompts']:,} prompts x {len(r['seeds'])} seed(s)")
    diffs.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

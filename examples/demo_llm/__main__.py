"""The real-LLM demo: distill SmolLM2-135M-Instruct into a copy pruned to a quarter of its layers.

    make demo-llm                 # full run: seeds 1, 2, 3 (about 45 minutes on 2 cores)
    make demo-llm QUICK=1         # short run: seed 1 (about 5 minutes)
    python -m examples.demo_llm --eval-split dev --steps 12 ...   # choosing settings
    make demo-llm SEEDS=1,2 OUT=elsewhere

1. The teacher (scripts/fetch_model.py's cached folder) is served by `python -m teacher_server`.
2. The student: the teacher with 8 of its 30 decoder layers kept (student_worker.tools.prune).
3. The prompts: examples/demo_llm/prompts.py's chat records, train/dev/test; test is never trained on.
4. Per seed, the pruned student is healed by a short seqkd run (the warm start); then per method
   (same steps, batch and learning rate) the student worker trains a copy of the warm start,
   saving checkpoints; the last (and, for the first seed, every) checkpoint is measured on the
   test prompts and the checked prompts (Judge: both directions of KL, the teacher's log-lik of
   the greedy answers, capped and repetitive answers, agreement, prefix match, checked answers).
Writes OUT/results.json, OUT/results.md (also printed, with paired 95% bootstrap intervals over
seeds and prompts and side-by-side answers; examples/demo_llm/report.py renders it from
results.json alone) and OUT/reverse_kl.png. `--publish` (make demo-llm PUBLISH=1) also keeps
results.json as docs/results/smollm2.json, from which `make docs` writes the tables of
docs/results/smollm2.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from distill.client.teacher_client import TeacherClient
from examples.demo_llm import report
from examples.demo_llm.prompts import is_correct
from examples.demo_llm.prompts import write as write_prompts
from scripts.fetch_model import fetch
from student_worker.config import DataConfig, load_config
from student_worker.data.prompts import PromptData
from student_worker.methods import Method, TeacherSamples, TopKDivergence, register_method
from student_worker.rollouts.sampling import sample
from student_worker.rollouts.tokens import eos_ids_of, pad, pad_id_of
from student_worker.tools.prune import prune
from student_worker.train.checkpoint import checkpoint_dir
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

# kd on the teacher's own completions (Generate), forward KL to its top-k
register_method(Method("kd-teacher", TeacherSamples(), TopKDivergence()))

# name in the table -> (preset, overrides)
METHODS = {
    "seqkd": ("seqkd", []),
    "kd": ("kd", ["method.name=kd-teacher", "method.divergence=forward_kl"]),
    "gkd": ("gkd", ["method.divergence=jsd", "method.beta=0.5", "method.student_fraction=1.0"]),
    "onpolicy-rkl": ("onpolicy-rkl", []),
}
KEEP_LAYERS = 8
# Chosen for 2 cores, one thread each for the worker and the teacher: batch 4, top-k 20, lr 1e-4.
# A freshly pruned student writes gibberish, and on-policy methods cannot learn from it (its own
# samples carry no signal: in a QUICK run, 6 steps from the pruned student left gkd at
# reverse KL 8.8 and onpolicy-rkl at 7.5 where seqkd reached 3.9 and kd 3.7). So every method
# starts from one warm start: the pruned student after `warm_steps` of seqkd (reverse KL ~10 -> 3.4
# in 24 steps), the usual recipe (prune, heal off-policy, then distill on-policy). One step takes
# 4-6 s here; a seed ~15 minutes, QUICK ~5.
FULL = dict(warm_steps=24, steps=24, save_every=12, test_prompts=50, check_prompts=67, batch=4, max_new_tokens=32,
            lr=1e-4)
QUICK = dict(warm_steps=12, steps=8, save_every=8, test_prompts=16, check_prompts=24, batch=4, max_new_tokens=24,
             lr=1e-4)


def trim(text: str) -> str:
    return text.strip()


def prefix_match(ids: list[int], teacher_ids: list[int]) -> float:
    """The fraction of the teacher's greedy answer the student's greedy answer repeats before
    they first differ (1 when equal): partial credit that exact agreement does not give."""
    same = next((i for i, (a, b) in enumerate(zip(ids, teacher_ids)) if a != b), min(len(ids), len(teacher_ids)))
    return same / max(len(teacher_ids), 1)


def repetitive(ids: list[int], n: int = 3, times: int = 3) -> bool:
    """Some run of n tokens occurs `times` times or more in the answer (a loop)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return any(grams.count(g) >= times for g in set(grams))


@torch.no_grad()
def student_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                     chunk: int = 8) -> list[torch.Tensor]:
    """log q of each answer's tokens after its prompt (float32 [len(answer)] per sequence)."""
    out = []
    for start in range(0, len(prompts), chunk):
        rows = list(zip(prompts[start:start + chunk], answers[start:start + chunk]))
        ids_BT, mask_BT = pad([p + a for p, a in rows], pad_id, side="right")
        logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits.float()
        for row, (p, a) in enumerate(rows):
            targets = torch.tensor(a)
            logprobs_LV = torch.log_softmax(logits_BTV[row, len(p) - 1:len(p) + len(a) - 1], -1)
            out.append(logprobs_LV.gather(-1, targets[:, None])[:, 0])
    return out


class Judge:
    """Measures a student on the test prompts (and the checked prompts) against the teacher,
    served at `client`. Per prompt, both directions of KL and the quality of the greedy answer:

    - reverse_kl: the student samples at temperature 1, the teacher scores; mean over the sample's
      tokens of log q - log p (what gkd and onpolicy-rkl minimise);
    - forward_kl: the teacher samples at temperature 1 (the same samples for every student of a
      seed), the student scores; mean of log p - log q (what kd and seqkd minimise);
    - teacher_loglik: the teacher's mean log-prob per token of the student's greedy answer, its end
      of turn included when it stopped (length-normalised: a short right answer is not penalised
      for being short);
    - agreement and prefix_match against the teacher's greedy answer; capped (the answer hit the
      token cap without ending its turn) and repetitive (some 3 tokens occur 3 times);
    - check_accuracy: on the checked prompts (prompts.CHECKS), the greedy answer is right.
    """

    def __init__(self, client: TeacherClient, tokenizer, prompts: list[list[int]],
                 checks: list[tuple[list[int], str]], max_new_tokens: int):
        self.client, self.tokenizer, self.prompts, self.cap = client, tokenizer, prompts, max_new_tokens
        self.checks = checks
        self.eos = eos_ids_of(tokenizer, declared=client.info().special_tokens.eos_ids)
        self.pad = pad_id_of(tokenizer, self.eos)
        answers = client.generate(prompts + [p for p, _ in checks], temperature=0.0, max_new_tokens=max_new_tokens)
        greedy = [a[0] for a in answers]
        self.teacher_ids = [g.token_ids.tolist() for g in greedy[:len(prompts)]]
        self.teacher_text = [self.text(ids) for ids in self.teacher_ids]
        self.teacher = self.quality(greedy[:len(prompts)], [g.finish_reason == "stop" for g in greedy],
                                    [self.text(g.token_ids) for g in greedy[len(prompts):]])
        self.teacher_samples = {}   # seed -> the teacher's samples at temperature 1

    def text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def quality(self, greedy, finished: list[bool], check_answers: list[str]) -> dict:
        """The measures of greedy answers (token ids per test prompt; check answers as text)."""
        ids = [list(map(int, g.token_ids)) for g in greedy]
        scores = self.client.score([p + a for p, a in zip(self.prompts, ids)], [len(p) for p in self.prompts],
                                   top_k=1)
        return {"teacher_loglik": [float(s.token_logprobs.mean()) for s in scores],
                "agreement": [float(trim(self.text(a)) == trim(t)) for a, t in zip(ids, self.teacher_text)],
                "prefix_match": [prefix_match(a, t) for a, t in zip(ids, self.teacher_ids)],
                "capped": [float(not done) for done in finished[:len(ids)]],
                "repetitive": [float(repetitive(a)) for a in ids],
                "check_accuracy": [float(is_correct(a, expected)) for a, (_, expected) in
                                   zip(check_answers, self.checks)],
                "answers": [self.text(a) for a in ids], "length": [len(a) for a in ids]}

    def samples_of_teacher(self, seed: int):
        if seed not in self.teacher_samples:
            drawn = self.client.generate(self.prompts, temperature=1.0, max_new_tokens=self.cap, seed=seed)
            self.teacher_samples[seed] = [d[0] for d in drawn]
        return self.teacher_samples[seed]

    @torch.no_grad()
    def measure(self, model_dir, seed: int) -> dict:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        kw = dict(max_new_tokens=self.cap, eos_ids=self.eos, pad_id=self.pad, real_vocab=len(self.tokenizer))
        greedy = sample(model, self.prompts + [p for p, _ in self.checks], temperature=0.0, **kw)
        torch.manual_seed(seed)
        drawn = sample(model, self.prompts, temperature=1.0, **kw)
        scores = self.client.score([p + d.token_ids for p, d in zip(self.prompts, drawn)],
                                   [len(p) for p in self.prompts], top_k=1)
        rkl = [float((d.logprobs - s.token_logprobs).mean()) if d.token_ids else 0.0
               for d, s in zip(drawn, scores)]
        teacher = self.samples_of_teacher(seed)
        log_q = student_logprobs(model, self.prompts, [t.token_ids.tolist() for t in teacher], self.pad)
        fkl = [float((t.logprobs - q).mean()) for t, q in zip(teacher, log_q)]
        n = len(self.prompts)
        return {"reverse_kl": rkl, "forward_kl": fkl,
                **self.quality(greedy[:n], [g.finished for g in greedy],
                               [self.text(g.token_ids) for g in greedy[n:]])}


MEASURES = report.MEASURES


def new_entry() -> dict:
    """One row of results.json: a list per measure (one value per seed) and the costs."""
    return {**{key: [] for key in MEASURES}, "answer_length": [], "teacher_tokens": 0, "wall_seconds": 0.0}


def record(entry: dict, measured: dict, tokens: int = 0, wall: float = 0.0) -> None:
    for key in MEASURES:
        entry[key].append(float(np.mean(measured[key])))
    entry["answer_length"].append(float(np.mean(measured["length"])))
    entry["teacher_tokens"] += tokens
    entry["wall_seconds"] += wall


def summary(entry: dict) -> str:
    return (f"reverse KL {entry['reverse_kl'][-1]:.3f}, forward KL {entry['forward_kl'][-1]:.3f}, "
            f"teacher log-lik {entry['teacher_loglik'][-1]:.2f}, checked {entry['check_accuracy'][-1]:.0%}, "
            f"capped {entry['capped'][-1]:.0%}")


def run_method(name, run_dir, student_dir, data, target, seed, p) -> tuple[float, int]:
    """Trains METHODS[name] from student_dir into run_dir; returns (wall seconds, teacher tokens)."""
    preset, extra = METHODS[name]
    cfg = load_config(None, preset, [
        f"student.path={student_dir}", f"teacher.target={target}", f"data.source={data}",
        f"data.batch_size={p['batch']}", f"sampling.max_new_tokens={p['max_new_tokens']}",
        "teacher.top_k=20", f"optim.lr={p['lr']}", "optim.warmup_steps=0", f"train.steps={p['steps']}",
        f"train.save_every={p['save_every']}", "train.eval_every=0", f"train.seed={seed}",
        "student.num_threads=1", *extra])
    start = time.monotonic()
    train(cfg, run_dir, progress=False)
    wall = time.monotonic() - start
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    calls = 1 + int(name == "kd")   # kd: Generate, then Score on the same tokens
    tokens = calls * sum(x["completion_tokens"] for x in lines)
    return wall, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "demo-llm-output")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")))
    parser.add_argument("--seeds", default=os.environ.get("SEEDS"),
                        help="comma-separated; 1,2,3 by default, 1 with --quick (settings were chosen on seed 0 "
                             "and the dev split)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--eval-split", choices=["test", "dev"], default="test",
                        help="dev: measure on the dev prompts (for choosing settings; test stays unseen)")
    parser.add_argument("--publish", action="store_true", default=os.environ.get("PUBLISH", "") not in ("", "0"),
                        help="keep the numbers as docs/results/smollm2.json and rewrite the tables made from them")
    for key, kind in (("steps", int), ("warm_steps", int), ("batch", int), ("lr", float)):
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, help="overrides the run's setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    p = dict(QUICK if args.quick else FULL)
    p.update({key: getattr(args, key) for key in ("steps", "warm_steps", "batch", "lr")
              if getattr(args, key) is not None})
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3")).split(",")]
    methods = args.methods.split(",")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = fetch("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student_dir = out / "student-init"
    if not (student_dir / "config.json").exists():
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        prune(teacher, KEEP_LAYERS)[0].save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        del teacher
    paths = write_prompts(out / "prompts")
    test = PromptData(DataConfig(source=str(paths[args.eval_split])), tokenizer).examples[:p["test_prompts"]]
    prompts = [e.prompt_ids for e in test]
    check = PromptData(DataConfig(source=str(paths["check"])), tokenizer).examples[:p["check_prompts"]]
    expected = [json.loads(line)["answer"] for line in paths["check"].read_text().splitlines()]
    checks = [(e.prompt_ids, answer) for e, answer in zip(check, expected)]
    server = TeacherProcess(teacher_dir, "--max-context", "512", start_timeout=600)
    try:
        server.wait_serving(timeout=600)
        with TeacherClient(server.target, timeout=300) as client:
            judge = Judge(client, tokenizer, prompts, checks, p["max_new_tokens"])
            results = {"teacher": {"model": "SmolLM2-135M-Instruct", "student_layers": KEEP_LAYERS,
                                   "settings": p, "answer_length": float(np.mean(judge.teacher["length"])),
                                   **{key: float(np.mean(judge.teacher[key])) for key in report.QUALITY}},
                       "seeds": seeds, "split": args.eval_split,
                       "initial": new_entry(), "warm_start": new_entry(), "methods": {}}
            per_prompt = {}   # (name, seed) -> measure
            curves = {}       # name -> [(step, teacher tokens, reverse KL)] (first seed)
            for seed in seeds:
                m0 = per_prompt[("initial", seed)] = judge.measure(student_dir, seed)
                record(results["initial"], m0)
                start_dir = student_dir
                if p["warm_steps"]:   # every method starts from the pruned student healed by seqkd
                    warm = dict(p, steps=p["warm_steps"], save_every=p["warm_steps"])
                    warm_dir = out / "runs" / f"warm-seed{seed}"
                    wall, tokens = run_method("seqkd", warm_dir, student_dir, paths["train"],
                                              server.target, seed, warm)
                    start_dir = checkpoint_dir(warm_dir, p["warm_steps"])
                    m0 = per_prompt[("warm_start", seed)] = judge.measure(start_dir, seed)
                    record(results["warm_start"], m0, tokens, wall)
                    print(f"seed {seed} warm start ({p['warm_steps']} seqkd steps): "
                          f"{summary(results['warm_start'])}", flush=True)
                for name in methods:
                    run_dir = out / "runs" / f"{name}-seed{seed}"
                    wall, tokens = run_method(name, run_dir, start_dir, paths["train"], server.target,
                                              seed, p)
                    # the curve (checkpoints before the last) for the first seed only
                    steps = range(p["save_every"], p["steps"] + 1, p["save_every"]) if seed == seeds[0] else []
                    curve = [(0, 0, float(np.mean(m0["reverse_kl"])))]
                    for step in steps:
                        m = judge.measure(checkpoint_dir(run_dir, step), seed)
                        curve.append((step, tokens * step // p["steps"], float(np.mean(m["reverse_kl"]))))
                    if not steps:
                        m = judge.measure(checkpoint_dir(run_dir, p["steps"]), seed)
                    per_prompt[(name, seed)] = m
                    entry = results["methods"].setdefault(name, new_entry())
                    record(entry, m, tokens, wall)
                    curves.setdefault(name, curve)
                    print(f"seed {seed} {name}: {summary(entry)}, {tokens} teacher tokens, {wall:.0f} s",
                          flush=True)
    finally:
        server.terminate()
    results["comparisons"] = report.comparisons(per_prompt, seeds, methods)
    shown = ["initial", *(["warm_start"] if p["warm_steps"] else []), *methods]
    results["samples"] = report.samples(per_prompt, seeds[0], shown, [user_turn(e.prompt) for e in test],
                                        judge.teacher_text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report.results_table(results)
    (out / "results.md").write_text(text)
    print(text)
    plot(curves, out / "reverse_kl.png")
    if args.publish:
        from scripts.gen_docs import publish

        publish("smollm2", results)


def user_turn(prompt: str) -> str:
    """The user's message in a rendered chat prompt."""
    return prompt.split("user")[-1].split("<|im_end|>")[0].strip()


def plot(curves, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(10, 4))
    for name, curve in curves.items():
        steps, tokens, rkl = zip(*curve)
        by_step.plot(steps, rkl, marker="o", label=name)
        by_tokens.plot(tokens, rkl, marker="o", label=name)
    by_step.set(xlabel="step", ylabel="held-out reverse KL (nats/token)")
    by_tokens.set(xlabel="teacher tokens", ylabel="held-out reverse KL (nats/token)")
    by_step.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()

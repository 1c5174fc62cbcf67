"""The real-LLM demo's report, rendered from its results.json alone: OUT/results.md, and (once
published) docs/results/smollm2.md and README.md's table through `make docs`."""

from __future__ import annotations

import numpy as np

from student_worker.tools.stats import Interval, describe, paired_bootstrap

MEASURES = ("reverse_kl", "agreement", "prefix_match")
ON_POLICY, OFF_POLICY = ("gkd", "onpolicy-rkl"), ("seqkd", "kd")
SAMPLE_PROMPTS = 3   # prompts whose greedy answers the report shows side by side


def comparisons(per_prompt: dict, seed: int, methods: list[str]) -> list[dict]:
    """Each on-policy method minus each off-policy one, per measure, paired over the test prompts
    of `seed` (per_prompt[(name, seed)][measure]: one value per prompt)."""
    return [{"method": on, "baseline": off, "measure": measure,
             **paired_bootstrap(per_prompt[on, seed][measure], per_prompt[off, seed][measure]).as_dict()}
            for on in ON_POLICY for off in OFF_POLICY if on in methods and off in methods
            for measure in MEASURES]


def samples(per_prompt: dict, seed: int, names: list[str], prompts: list[str], teacher: list[str]) -> list[dict]:
    """The first SAMPLE_PROMPTS prompts with the teacher's and each student's greedy answer."""
    return [{"prompt": prompts[i], "teacher": teacher[i].strip(),
             "answers": {name: per_prompt[name, seed]["answers"][i].strip() for name in names}}
            for i in range(min(SAMPLE_PROMPTS, len(prompts)))]


def _rows(r: dict) -> list[tuple[str, dict]]:
    rows = [(f"pruned ({r['teacher']['student_layers']} of 30 layers)", r["initial"])]
    if r["warm_start"]["reverse_kl"]:
        rows.append((f"warm start ({r['teacher']['settings']['warm_steps']} `seqkd` steps)", r["warm_start"]))
    return rows + [(f"`{name}`", entry) for name, entry in r["methods"].items()]


def headline_table(r: dict) -> str:
    """Each student's held-out reverse KL, the lowest in bold (README.md)."""
    rows = _rows(r)
    best = min(np.mean(entry["reverse_kl"]) for _, entry in rows)
    lines = ["| student | reverse KL (nats/token) |", "| --- | --- |"]
    for label, entry in rows:
        value = f"{np.mean(entry['reverse_kl']):.2f}"
        lines.append(f"| {label} | {f'**{value}**' if np.mean(entry['reverse_kl']) == best else value} |")
    return "\n".join(lines) + "\n"


def _interval(c: dict, percent: bool) -> str:
    f = (lambda v: f"{100 * v:+.0f}") if percent else (lambda v: f"{v:+.2f}")
    text = f"{f(c['mean'])} [{f(c['low'])}, {f(c['high'])}]"
    return f"**{text}**" if c["low"] > 0 or c["high"] < 0 else text


def results_table(r: dict, heading: bool = True) -> str:
    t = r["teacher"]
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [*([f"## Distilling SmolLM2-135M-Instruct into {t['student_layers']} of its 30 layers", ""]
               if heading else []),
             f"Seeds {seeds}, {r['split']} split, {t['settings']['test_prompts']} prompts; teacher's greedy "
             f"answers {t['answer_length']:.1f} tokens long on average. Means over seeds.", "",
             "| student | reverse KL (nats/token) | agreement | prefix match | greedy answer length | "
             "teacher tokens | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, e in _rows(r):
        lines.append(f"| {label} | {np.mean(e['reverse_kl']):.2f} | {np.mean(e['agreement']):.0%} | "
                     f"{np.mean(e['prefix_match']):.0%} | {e['answer_length']:.1f} | "
                     f"{e['teacher_tokens']:,} | {e['wall_seconds']:.0f} |")
    lines += ["", f"On-policy minus off-policy, paired over the test prompts of seed {r['seeds'][0]} (95% "
              "bootstrap intervals; **bold** where the interval excludes 0, otherwise the two tie). Reverse "
              "KL: lower is better; agreement and prefix match in points: higher is better.", "",
              "| pair | reverse KL | agreement | prefix match |", "| --- | --- | --- | --- |"]
    pairs = dict.fromkeys((c["method"], c["baseline"]) for c in r["comparisons"])
    for on, off in pairs:
        cells = {c["measure"]: c for c in r["comparisons"] if (c["method"], c["baseline"]) == (on, off)}
        lines.append(f"| `{on}` − `{off}` | {_interval(cells['reverse_kl'], False)} | "
                     f"{_interval(cells['agreement'], True)} | {_interval(cells['prefix_match'], True)} |")
    lines.append("")
    for on, off in pairs:
        c = next(c for c in r["comparisons"] if (c["method"], c["baseline"], c["measure"]) == (on, off, "reverse_kl"))
        lower_is_better = Interval(-c["mean"], -c["high"], -c["low"], c["confidence"])
        lines.append(f"- On reverse KL, {describe(f'`{on}`', f'`{off}`', lower_is_better, 'nats/token', 1.0)}.")
    if len(r["seeds"]) == 1:
        lines += ["", "One seed: the intervals cover the test prompts only, not how much another seed "
                      "would move things."]
    lines += ["", "Greedy answers side by side:", ""]
    for sample in r["samples"]:
        lines += [f"**{sample['prompt']}**", "", f"- teacher: {sample['teacher']!r}"]
        lines += [f"- {name}: {answer!r}" for name, answer in sample["answers"].items()] + [""]
    return "\n".join(lines)

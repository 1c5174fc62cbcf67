"""The real-LLM demo's report, rendered from its results.json alone: OUT/results.md, and (once
published) docs/results/smollm2.md and README.md's table through `make docs`."""

from __future__ import annotations

import numpy as np

from student_worker.tools.stats import paired_bootstrap

# per prompt, per student (Judge.measure); the quality ones are measured for the teacher too
QUALITY = ("teacher_loglik", "check_accuracy", "agreement", "prefix_match", "capped", "repetitive")
MEASURES = ("reverse_kl", "forward_kl", *QUALITY)
LOWER_IS_BETTER = {"reverse_kl", "forward_kl", "capped", "repetitive"}
NATS = {"reverse_kl", "forward_kl", "teacher_loglik"}   # in nats/token; the others are shares
COMPARED = ("reverse_kl", "forward_kl", "teacher_loglik", "check_accuracy", "capped")
HEADINGS = {"reverse_kl": "reverse KL", "forward_kl": "forward KL", "teacher_loglik": "teacher log-lik",
            "check_accuracy": "checked right", "agreement": "agreement", "prefix_match": "prefix match",
            "capped": "capped", "repetitive": "repetitive"}
ON_POLICY, OFF_POLICY = ("gkd", "onpolicy-rkl"), ("seqkd", "kd")
SAMPLE_PROMPTS = 3   # prompts whose greedy answers the report shows side by side


def pairs(methods: list[str], warm_start: bool) -> list[tuple[str, str]]:
    """Each on-policy method against each off-policy one, then each method against the warm start."""
    return ([(on, off) for on in ON_POLICY for off in OFF_POLICY if on in methods and off in methods]
            + [(name, "warm_start") for name in methods if warm_start])


def comparisons(per_prompt: dict, seeds: list[int], methods: list[str]) -> list[dict]:
    """Differences a - b per measure in COMPARED, paired over seeds and prompts (per_prompt[(name,
    seed)][measure]: one value per prompt): the interval resamples seeds, then prompts within each."""
    warm = all(("warm_start", seed) in per_prompt for seed in seeds)
    return [{"method": a, "baseline": b, "measure": measure,
             **paired_bootstrap([per_prompt[a, s][measure] for s in seeds],
                                [per_prompt[b, s][measure] for s in seeds]).as_dict()}
            for a, b in pairs(methods, warm) for measure in COMPARED]


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


def _label(name: str) -> str:
    return "the warm start" if name == "warm_start" else f"`{name}`"


def _value(measure: str, v: float) -> str:
    return f"{v:.2f}" if measure in NATS else f"{v:.0%}"


def _cell(measure: str, values: list[float]) -> str:
    """The mean over seeds, with the lowest and highest seed when there are several."""
    text = _value(measure, float(np.mean(values)))
    if len(values) > 1:
        text += f" ({_value(measure, min(values))} to {_value(measure, max(values))})"
    return text


def _best(rows: list[tuple[str, dict]], measure: str) -> float:
    means = [float(np.mean(entry[measure])) for _, entry in rows]
    return min(means) if measure in LOWER_IS_BETTER else max(means)


HEADLINE = ("reverse_kl", "forward_kl", "teacher_loglik", "check_accuracy", "capped")


def headline_table(r: dict) -> str:
    """Each student's mean over seeds on HEADLINE, the best student in bold where students differ
    (README.md), the teacher as a reference row."""
    rows = _rows(r)
    lines = ["| student | " + " | ".join(HEADINGS[m] for m in HEADLINE) + " |",
             "| --- |" + " --- |" * len(HEADLINE)]
    for label, entry in rows:
        cells = []
        for measure in HEADLINE:
            mean = float(np.mean(entry[measure]))
            differ = len({float(np.mean(e[measure])) for _, e in rows}) > 1
            cells.append(f"**{_value(measure, mean)}**" if differ and mean == _best(rows, measure)
                         else _value(measure, mean))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    t = r["teacher"]
    lines.append("| teacher | 0 | 0 | " + " | ".join(_value(m, t[m]) for m in HEADLINE[2:]) + " |")
    return "\n".join(lines) + "\n"


def _interval(c: dict) -> str:
    percent = c["measure"] not in NATS
    f = (lambda v: f"{100 * v:+.0f}") if percent else (lambda v: f"{v:+.2f}")
    text = f"{f(c['mean'])} [{f(c['low'])}, {f(c['high'])}]"
    return f"**{text}**" if c["low"] > 0 or c["high"] < 0 else text


def outcome(c: dict) -> str:
    """"better", "worse" or "tie": what the interval of one comparison supports for its first
    student, oriented by whether the measure is better lower or higher."""
    if not (c["low"] > 0 or c["high"] < 0):
        return "tie"
    return "better" if (c["mean"] < 0) == (c["measure"] in LOWER_IS_BETTER) else "worse"


def results_table(r: dict, heading: bool = True) -> str:
    t = r["teacher"]
    s = t["settings"]
    seeds = ", ".join(map(str, r["seeds"]))
    several = len(r["seeds"]) > 1
    columns = MEASURES
    lines = [*([f"## Distilling SmolLM2-135M-Instruct into {t['student_layers']} of its 30 layers", ""]
               if heading else []),
             f"Seeds {seeds}, {r['split']} split: {s['test_prompts']} prompts, and {s['check_prompts']} checked "
             f"prompts. The teacher's greedy answers are {t['answer_length']:.1f} tokens long on average. Means over "
             f"seeds{' (the lowest and highest seed in brackets)' if several else ''}; KL and log-lik in "
             "nats/token.", "",
             "| student | " + " | ".join(HEADINGS[m] for m in columns) + " | greedy answer length | teacher tokens "
             "| wall s |", "| --- |" + " --- |" * (len(columns) + 3)]
    for label, e in _rows(r):
        cells = [_cell(m, e[m]) if m in COMPARED else _value(m, float(np.mean(e[m]))) for m in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(e['answer_length']):.1f} | "
                     f"{e['teacher_tokens']:,} | {e['wall_seconds']:.0f} |")
    lines.append("| teacher | – | – | " + " | ".join(_value(m, t[m]) for m in QUALITY)
                 + f" | {t['answer_length']:.1f} | – | – |")
    lines += ["", f"Differences (first minus second), paired over seeds {seeds} and the prompts: 95% bootstrap "
              "intervals that resample seeds, then prompts within each; **bold** where the interval excludes 0, "
              "otherwise the two tie. KL and log-lik in nats/token, the rest in points.", "",
              "| pair | " + " | ".join(f"{HEADINGS[m]} ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)"
                                      for m in COMPARED) + " |",
              "| --- |" + " --- |" * len(COMPARED)]
    by_pair = {}
    for c in r["comparisons"]:
        by_pair.setdefault((c["method"], c["baseline"]), {})[c["measure"]] = c
    for (a, b), cells in by_pair.items():
        lines.append(f"| {_label(a)} − {_label(b)} | " + " | ".join(_interval(cells[m]) for m in COMPARED) + " |")
    lines += ["", "Which of each pair is better (the first named), where the interval says:", ""]
    for measure in COMPARED:
        found = {"better": [], "tie": [], "worse": []}
        for (a, b), cells in by_pair.items():
            found[outcome(cells[measure])].append(f"{_label(a)} vs {_label(b)}")
        said = "; ".join(f"{verdict}: {', '.join(pairs)}" for verdict, pairs in found.items() if pairs)
        name = HEADINGS[measure]
        lines.append(f"- {name[0].upper()}{name[1:]}: {said}.")
    if not several:
        lines += ["", "One seed: the intervals cover the prompts only, not how much another seed would move things."]
    lines += ["", "Greedy answers side by side:", ""]
    for sample in r["samples"]:
        lines += [f"**{sample['prompt']}**", "", f"- teacher: {sample['teacher']!r}"]
        lines += [f"- {name}: {answer!r}" for name, answer in sample["answers"].items()] + [""]
    return "\n".join(lines)

"""The covering design of tests/e2e/test_combinations.py: the options users combine, each run a
set of overrides, chosen so that every pair of option values is trained together at least once
(tests/unit/test_combination_design.py checks the design itself)."""

from __future__ import annotations

import itertools

from student_worker.config import PRESETS

# factor -> value -> its overrides (a method is a preset; its value is the preset's name)
FACTORS: dict[str, dict[str, list[str]]] = {
    "method": {name: [] for name in PRESETS},
    "parallel": {"ddp": ["train.parallel=ddp"], "fsdp": ["train.parallel=fsdp"]},
    "lora": {"off": [], "on": ["student.lora.r=4", "student.lora.target_modules=[q_proj,v_proj]"]},
    "engine": {"hf": ["sampling.engine=hf"], "vllm": ["sampling.engine=vllm"]},
    "lag": {"0": ["train.lag=0"], "1": ["train.lag=1"]},
    "halves": {"off": [], "on": ["train.pipeline_halves=true"]},
    "micro": {"off": [], "on": ["train.micro_batch_size=1", "train.loss_chunk_size=3"]},
    "checkpointing": {"off": [], "on": ["student.gradient_checkpointing=true"]},
    # float32; float32 weights computing in bf16 (a GPU's default); pure bf16 weights (LoRA: its base)
    "precision": {"float32": ["student.dtype=float32", "student.autocast=none"],
                  "mixed": ["student.dtype=float32", "student.autocast=bfloat16"],
                  "bf16": ["student.dtype=bfloat16", "student.autocast=none"]},
    # the data as JSONL, or the same records from a distill-score cache (a shard per rank): data
    # completions come with their scores, student samples are still scored online
    "data": {"jsonl": [], "cache": ["data.source={score_cache}"]},
    # named teachers (two names for the one server: each record names one; the batch splits by them)
    "teachers": {"one": [], "two": ["teacher=null", 'teachers={{"a": {{"target": "{target}", "top_k": 8}}, '
                                                    '"b": {{"target": "{target}", "top_k": 8}}}}']},
}


# Combinations that cannot work, refused at start: (the rule, the option its message names).
REFUSALS = [
    # skd drafts need the student's full distributions, which vLLM does not return
    (lambda run: run["method"] == "skd" and run["engine"] == "vllm", "sampling.engine"),
    # a distill-score cache keeps no record's teacher name
    (lambda run: run["data"] == "cache" and run["teachers"] == "two", "data.teacher_field"),
]


# Runs the design holds whatever pairs they cover (a factor left out: its first value): the
# project's main path, a student too large for DDP distilled on its own vLLM samples.
MUST = [{"method": "gkd", "parallel": "fsdp", "engine": "vllm", "precision": "mixed"}]


COMMON = ["data.batch_size=2", "sampling.max_new_tokens=4", "teacher.top_k=8", "optim.lr=3e-3",
          "train.steps=3", "student.num_threads=1"]


def refused_options(run: dict) -> list[str]:
    return [option for rule, option in REFUSALS if rule(run)]


def pairs(run: dict) -> set:
    return set(itertools.combinations(run.items(), 2))


def covering_design(factors: dict, refused=refused_options, must: list[dict] = ()) -> list[dict]:
    """Greedy all-pairs: the `must` runs, then repeatedly the combination that covers the most
    pairs not yet covered (the first such in product order: deterministic). A run expected to
    train covers all its pairs; one expected to be refused covers only the pairs no trainable run
    can hold (skd with vllm), and only combinations breaking at most one rule are candidates, so
    that each refusal is seen on its own."""
    names = list(factors)
    candidates = [dict(zip(names, values)) for values in itertools.product(*factors.values())]
    candidates = [c for c in candidates if len(refused(c)) <= 1]
    trainable = set().union(*(pairs(c) for c in candidates if not refused(c)))
    covers = [pairs(c) - trainable if refused(c) else pairs(c) for c in candidates]
    design = [{**{name: next(iter(values)) for name, values in factors.items()}, **run} for run in must]
    todo = set().union(*covers) - set().union(set(), *map(pairs, design))
    while todo:
        best = max(range(len(candidates)), key=lambda i: len(covers[i] & todo))
        design.append(candidates[best])
        todo -= covers[best]
    return design


DESIGN = covering_design(FACTORS, must=MUST)


SHORT = {"lora": "lora", "lag": "lag1", "halves": "halves", "micro": "micro", "checkpointing": "ckpt",
         "data": "cache", "teachers": "teachers2"}


def run_name(run: dict) -> str:
    """e.g. gkd-fsdp-vllm-mixed-lora-micro: the non-default values."""
    flags = [SHORT[k] for k, v in run.items() if k in SHORT and v != next(iter(FACTORS[k]))]
    return "-".join([run["method"], run["parallel"], run["engine"], run["precision"], *flags])


NAMES = [f"{i:02d}-{run_name(run)}" for i, run in enumerate(DESIGN)]


def overrides(run: dict) -> list[str]:
    return [*COMMON, *(o for factor, value in run.items() for o in FACTORS[factor][value])]

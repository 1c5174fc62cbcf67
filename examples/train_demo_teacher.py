"""Train the demo's models with this project's own student worker (sft).

    .venv/bin/python -m examples.train_demo_teacher [--only teacher|student]   # ~4 min on 2 cores
    .venv/bin/python -m examples.train_demo_teacher --task ringwalk            # its teacher, ~9 min

Writes examples/demo-teacher/ (digsum; ringwalk: examples/ringwalk-teacher/; Hugging Face folders,
safetensors, ~0.5 MB) with accuracy.json (its test-split accuracy, which a test re-checks), and
examples/demo-student/ (digsum only): the student's config
and tokenizer (every demo seed starts from it with its own random weights) plus the weights of
seed 0's initial student (sft until 45% sampled dev accuracy), which examples/quickstart.yaml
distills. Seeded: the same command gives the same models.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from student_worker.config import load_config
from student_worker.tasks import TASKS
from student_worker.tasks.digsum import tokenizer as digsum_tokenizer
from student_worker.train.evaluate import evaluate
from student_worker.train.trainer import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUDENT_DIR = ROOT / "examples" / "demo-student"
# per task: the teacher's folder, the positions and new tokens its answers need, its training run
TEACHERS = {
    "digsum": dict(folder=ROOT / "examples" / "demo-teacher", positions=32, new_tokens=10, batch=256, steps=3000),
    "ringwalk": dict(folder=ROOT / "examples" / "ringwalk-teacher", positions=64, new_tokens=48, batch=128,
                     steps=4000),
}
# teacher: 2 layers of width 64 (0.1M parameters); student: 1 layer of width 32 (14k)
TEACHER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4)
STUDENT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=4)


def write_config_folder(path: pathlib.Path, positions: int = 32, **arch) -> pathlib.Path:
    """A model folder holding only config.json and the tokenizer (weights: random, seeded)."""
    tokenizer = digsum_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **arch)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_teacher(task: str) -> None:
    t = TEACHERS[task]
    with tempfile.TemporaryDirectory() as tmp:
        init = write_config_folder(pathlib.Path(tmp) / "init", t["positions"], **TEACHER)
        cfg = load_config(None, "sft", [
            f"student.path={init}", "student.init=config", "student.num_threads=2",
            f"data.source={task}", f"data.batch_size={t['batch']}", "data.num_examples=200000",
            f"sampling.max_new_tokens={t['new_tokens']}", "optim.lr=2e-3", "optim.warmup_steps=100",
            "optim.schedule=linear", "optim.weight_decay=0.01", f"train.steps={t['steps']}",
            "train.eval_every=500", "train.eval_acceptance_prompts=0", "train.seed=0"])
        final = train(cfg, pathlib.Path(tmp) / "run")
        if t["folder"].exists():
            shutil.rmtree(t["folder"])
        shutil.copytree(final, t["folder"], ignore=shutil.ignore_patterns("trainer_state.*"))
    model = AutoModelForCausalLM.from_pretrained(t["folder"])
    acc = evaluate(model, digsum_tokenizer(), TASKS[task], "test", num_prompts=512,
                   max_new_tokens=t["new_tokens"])
    stated = {"task": task, "split": "test", "prompts": 512, "max_new_tokens": t["new_tokens"],
              "greedy": acc.greedy, "sampled": acc.sampled, "diversity": acc.diversity}
    (t["folder"] / "accuracy.json").write_text(json.dumps(stated, indent=2) + "\n")
    print(json.dumps(stated, indent=2))


def train_initial_student() -> None:
    """What the demo does for seed 0, kept so that quickstart.yaml has a student to distill."""
    write_config_folder(STUDENT_DIR, **STUDENT)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, "sft", [
            f"student.path={STUDENT_DIR}", "student.init=config", "data.source=digsum",
            "data.batch_size=128", "data.num_examples=50000", "sampling.max_new_tokens=10",
            "optim.lr=3e-3", "train.steps=3000", "train.eval_every=50", "train.seed=0",
            "train.stop_at_accuracy=0.45"])
        final = train(cfg, pathlib.Path(tmp) / "run")
        shutil.copy(final / "model.safetensors", STUDENT_DIR / "model.safetensors")
        shutil.copy(final / "config.json", STUDENT_DIR / "config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["teacher", "student"])
    parser.add_argument("--task", choices=sorted(TEACHERS), default="digsum",
                        help="ringwalk: its teacher only (the students start from random weights)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only != "student":
        train_teacher(args.task)
    if args.only != "teacher" and args.task == "digsum":
        train_initial_student()


if __name__ == "__main__":
    main()

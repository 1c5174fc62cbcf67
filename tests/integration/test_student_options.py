"""The worker's options for large students, through the real training loop against the real
teacher server: micro-batches with a chunked loss, activation checkpointing, LoRA, bf16
autocast, FSDP2 on one rank, the 8-GPU examples shrunk, the GPU's default precision (FSDP2 on two
ranks: tests/e2e/test_student_options.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from student_worker.config import PRESETS
from student_worker.train import checkpoint
from student_worker.train.trainer import train
from tests.helpers import worker_config

OPTIONS = {
    "micro-batches": ["train.micro_batch_size=1", "train.loss_chunk_size=3"],
    "checkpointing": ["student.gradient_checkpointing=true"],
    "lora": ["student.lora.r=4", "student.lora.target_modules=[q_proj,v_proj]"],
    "bf16": ["student.autocast=bfloat16"],
    "fsdp-one-rank": ["train.parallel=fsdp"],   # nothing to shard; the sharded checkpoint layout
}


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_with_each_option(preset, option, teacher, student_dir, data_file, tmp_path):
    cfg = worker_config(student_dir, teacher.target, data_file, "train.steps=2", "data.batch_size=2",
                 "sampling.max_new_tokens=4", *OPTIONS[option], preset=preset)
    final = train(cfg, tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses))), losses
    trained = AutoModelForCausalLM.from_pretrained(checkpoint.hf_folder(final)).state_dict()
    start = AutoModelForCausalLM.from_pretrained(student_dir).state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start), "no weight moved"


def test_lora_trains_only_adapters_and_resumes_exactly(teacher, student_dir, data_file, tmp_path):
    lora = ["student.lora.r=4", "student.lora.alpha=8", "student.lora.target_modules=[q_proj,v_proj]",
            "train.steps=4", "method.student_fraction=0.5", "optim.lr=1e-2"]
    straight = train(worker_config(student_dir, teacher.target, data_file, *lora, preset="gkd"), tmp_path / "a",
                     progress=False)
    assert _losses(tmp_path / "a")[-1] < _losses(tmp_path / "a")[0]
    stopped = train(worker_config(student_dir, teacher.target, data_file, *lora, "train.stop_after=2", preset="gkd"),
                    tmp_path / "b", progress=False)
    assert {p.name for p in stopped.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (stopped / "model.safetensors").exists() and not (stopped / "hf").exists()   # adapters only
    resumed = train(worker_config(student_dir, teacher.target, data_file, *lora, preset="gkd"), tmp_path / "b",
                    resume=True, progress=False)
    a, b = (load_file(p / "adapter_model.safetensors") for p in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the final checkpoint's hf/ is the merged student: the base moved only by B A
    merged = AutoModelForCausalLM.from_pretrained(checkpoint.hf_folder(resumed)).state_dict()
    base = AutoModelForCausalLM.from_pretrained(student_dir).state_dict()
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


# --------------------------------------------------------------------------------------------
# two CPU ranks: the real loop with DDP, then FSDP2, every collective checked


@pytest.mark.parametrize("example", ["examples/student-1.5b-lora.yaml", "examples/student-1.5b-fsdp.yaml"])
def test_the_8_gpu_examples_run_shrunk_to_the_tiny_models(example, teacher, student_dir, data_file, tmp_path):
    """The README's 1.5B configs, with the model, teacher, data and sizes swapped for tiny ones."""
    from student_worker.config import load_config

    cfg = load_config(example, None, [
        f"student.path={student_dir}", "student.dtype=float32", f"teacher.target={teacher.target}",
        f"data.source={data_file}", "data.batch_size=2", "sampling.max_new_tokens=4", "teacher.top_k=8",
        "train.steps=2", "train.micro_batch_size=1", "train.loss_chunk_size=3", "student.lora.r=4"
        if "lora" in example else "train.save_every=1"])
    final = train(cfg, tmp_path, progress=False)
    assert len(_losses(tmp_path)) == 2 and (final / "hf" / "model.safetensors").exists()


def test_the_gpu_default_precision_moves_every_weight_at_a_usual_lr(teacher, student_dir, data_file, tmp_path,
                                                                    caplog):
    """3 steps at lr 1e-5: what student.dtype=auto and student.autocast=auto mean on a GPU (float32
    weights, bf16 compute) moves every weight matrix; pure bf16 weights, only when asked for and
    with a warning, lose most updates to rounding (bf16 resolves 2^-8 of a weight)."""
    from student_worker.train.parallel import precision

    weights, compute = precision("auto", "auto", lora=False, device=torch.device("cuda"))
    runs = {"gpu default": [f"student.dtype={str(weights).removeprefix('torch.')}", "student.autocast=bfloat16"],
            "pure bf16": ["student.dtype=bfloat16", "student.autocast=none"]}
    assert (weights, compute) == (torch.float32, torch.bfloat16)
    start = AutoModelForCausalLM.from_pretrained(student_dir).state_dict()
    moved = {}
    for name, overrides in runs.items():
        caplog.clear()
        final = train(worker_config(student_dir, teacher.target, data_file, "optim.lr=1e-5", "train.steps=3", *overrides,
                             preset="kd"), tmp_path / name.replace(" ", "-"), progress=False)
        trained = AutoModelForCausalLM.from_pretrained(final, dtype="auto").state_dict()   # as saved
        # (the input embedding's rows of tokens the batches never hold get no gradient at all)
        kept = [k for k in start if "embed_tokens" not in k]
        changed = [(trained[k] != start[k].to(trained[k].dtype)).sum().item() for k in kept]
        moved[name] = sum(changed) / sum(start[k].numel() for k in kept)   # the share of weights
        warned = any("pure bf16" in r.getMessage() for r in caplog.records)
        assert warned == (name == "pure bf16"), name
    assert moved["gpu default"] > 0.99 and moved["pure bf16"] < 0.5, moved

"""FSDP2 on two CPU ranks (gloo) through the real training loop against the real teacher server:
the same losses as DDP, a sharded checkpoint that resumes on one rank, LoRA under DDP, and every
collective of a real step checked against the backends a GPU run uses (one rank each option:
tests/integration/test_student_options.py)."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from student_worker.train import checkpoint
from student_worker.train.trainer import train
from tests.helpers import worker_config
from tests.helpers.ranks import check_collectives, spawn_ranks


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _two_rank_runs(rank: int, student: str, target: str, data: str, out: str) -> None:
    from student_worker.distributed import backend_spec

    seen: list[str] = []
    # a CPU run checked against a GPU run's group: every collective's tensors must be on a
    # device it serves (the old trainer's NCCL-only group fails this on its step statistics)
    check_collectives(backend_spec(torch.device("cuda")), seen)
    common = ["train.steps=3", "train.micro_batch_size=1", "train.loss_chunk_size=3", "optim.lr=1e-3",
              "data.batch_size=2", "teacher.top_k=8"]
    for parallel in ("ddp", "fsdp"):
        train(worker_config(student, target, data, *common, f"train.parallel={parallel}", preset="kd"),
              f"{out}/{parallel}", progress=False)
    train(worker_config(student, target, data, *common, "student.lora.r=4", "train.steps=2", preset="kd"),
          f"{out}/lora", progress=False)   # DDP with LoRA
    if rank == 0:
        torch.save(seen, f"{out}/seen.pt")


def test_fsdp_on_two_ranks_equals_ddp_and_resumes_on_one(teacher, student_dir, data_file, tmp_path):
    """kd on fixed completions: the same losses with FSDP2 as with DDP (float32, <= 1e-5); the
    sharded checkpoint resumes in one process (another world size); the exported folder is the
    student; LoRA under DDP keeps identical replicas; every collective of the runs is on a
    device the cpu:gloo,cuda:nccl group serves."""
    spawn_ranks(_two_rank_runs, str(student_dir), teacher.target, str(data_file), str(tmp_path))
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert max(abs(a - b) for a, b in zip(ddp, fsdp)) <= 1e-5, (ddp, fsdp)
    lora = tmp_path / "lora" / "checkpoints" / "step-000002"
    digests = json.loads((lora / "trainer_state.json").read_text())["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] and (lora / "hf" / "model.safetensors").exists()
    seen = set(torch.load(tmp_path / "seen.pt"))
    # (FSDP2's own all-gathers and reduce-scatters bypass these Python entry points)
    assert {"all_reduce", "all_gather_object", "barrier"} <= seen, seen

    final = tmp_path / "fsdp" / "checkpoints" / "step-000003"
    assert (final / "sharded").is_dir() and not (final / "model.safetensors").exists()
    exported = AutoModelForCausalLM.from_pretrained(checkpoint.hf_folder(final)).state_dict()
    replicas = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "checkpoints" / "step-000003").state_dict()
    for name, weight in exported.items():
        torch.testing.assert_close(weight, replicas[name], atol=1e-4, rtol=0, msg=name)   # Adam: see test_parallel

    resumed = train(worker_config(student_dir, teacher.target, data_file, "train.steps=4", "train.parallel=fsdp",
                           "optim.lr=1e-3", "data.batch_size=2", "teacher.top_k=8", preset="kd"),
                    tmp_path / "fsdp", resume=True, progress=False, allow_config_change=True)
    assert [json.loads(x)["step"] for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]
    assert (resumed / "sharded").is_dir() and (resumed / "hf" / "model.safetensors").exists()

"""Distributed init and collectives: every rank on its own device, every collective on a device
its backend serves, and micro-batches over two ranks equal to one batch (gloo, real processes)."""

from __future__ import annotations

import functools
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from student_worker import distributed
from tests.test_chunked_loss import COMPLETIONS, PROMPTS, _method, _teacher_scores, _today


def test_each_rank_pins_its_own_gpu_and_gets_a_cpu_backend(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert distributed.init_distributed() == (1, 2, torch.device("cuda", 1))
    assert calls == {"device": torch.device("cuda", 1), "backend": "cpu:gloo,cuda:nccl"}
    assert distributed.backend_spec(torch.device("cpu")) == "gloo"


# --------------------------------------------------------------------------------------------
# a collective checker: would each collective of a CPU run work under the backends of a GPU run?


def _served(spec: str) -> set[str]:
    """Device types whose tensors a backend spec moves ("nccl" only CUDA ones)."""
    pairs = dict(p.split(":") for p in spec.split(",")) if ":" in spec else None
    return set(pairs) if pairs else {"nccl": {"cuda"}, "gloo": {"cpu"}}[spec]


def check_collectives(spec: str, seen: list[str]) -> None:
    """Wrap torch.distributed's Python collectives: each tensor must be on a device type `spec`
    serves, and object collectives and barriers (CPU objects, pickled into tensors on the
    group's object device) need a CPU backend. A GPU run's backend checked on a CPU run: the
    tensors a step creates on the host stay on the host there too."""
    served = _served(spec)

    def tensors_of(args, kwargs):
        for value in [*args, *kwargs.values()]:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, torch.Tensor):
                    yield item

    def wrap(name, objects):
        original = getattr(dist, name)

        @functools.wraps(original)
        def checked(*args, **kwargs):
            devices = {"cpu"} if objects else {t.device.type for t in tensors_of(args, kwargs)}
            missing = devices - served
            assert not missing, f"dist.{name} on {sorted(missing)} tensors: {spec!r} has no backend for them"
            seen.append(name)
            return original(*args, **kwargs)

        setattr(dist, name, checked)

    for name in ("all_reduce", "all_gather", "broadcast", "reduce_scatter_tensor", "all_gather_into_tensor"):
        wrap(name, objects=False)
    for name in ("all_gather_object", "broadcast_object_list", "barrier"):
        wrap(name, objects=True)


def test_checker_catches_a_cpu_tensor_under_nccl():
    seen = []
    originals = {n: getattr(dist, n) for n in ("all_reduce", "all_gather", "broadcast", "reduce_scatter_tensor",
                                               "all_gather_into_tensor", "all_gather_object",
                                               "broadcast_object_list", "barrier")}
    try:
        check_collectives("nccl", seen)   # what the old trainer initialised on GPUs
        with pytest.raises(AssertionError, match="no backend"):
            dist.all_reduce(torch.zeros(3))
        with pytest.raises(AssertionError, match="no backend"):
            dist.barrier()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


# --------------------------------------------------------------------------------------------
# two real ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, fn, port: int, world: int, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    fn(rank, *args)


def spawn_ranks(fn, *args, world: int = 2, timeout: float = 300) -> None:
    """fn(rank, *args) in `world` fresh processes of one job, as torchrun would start them
    (RANK, LOCAL_RANK, WORLD_SIZE and a free port in the environment). A rank that has not
    finished after `timeout` seconds fails the test instead of hanging the suite."""
    ranks = mp.start_processes(_join, args=(fn, _free_port(), world, args), nprocs=world,
                               start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout:.0f} s")


def _rank(rank: int, model_dir: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from student_worker.train import checkpoint
    from student_worker.losses import chunked_loss as C
    from student_worker.train.micro_batches import accumulate_gradients
    from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch

    seen: list[str] = []
    check_collectives(distributed.backend_spec(torch.device("cuda")), seen)
    _, world, device = distributed.init_distributed()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = slice(2 * rank, 2 * rank + 2)   # rank 0: sequences 0, 1; rank 1: sequences 2, 3
    rollout = Rollout(PROMPTS[rows], COMPLETIONS[rows], "student")
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(_teacher_scores(model.config.vocab_size)[rows], rollout, batch.targets_BS.shape[1])
    weights_M = C.reduction_weights(batch.mask_BS, "token", C.completion_counts(batch.mask_BS), world)
    loss, _ = accumulate_gradients(ddp, model.get_output_embeddings(), batch.input_ids_BT, batch.attention_BT,
                                   batch.mask_BS, C.topk_divergence("reverse_kl"), weights_M,
                                   C.topk_extras(teacher, batch.mask_BS), micro_batch_size=1, chunk_size=2)
    # the trainer's step statistics and checkpoint-time agreement, as it runs them
    stats = torch.tensor([loss.item(), rollout.num_completion_tokens], dtype=torch.float64)
    dist.all_reduce(stats)
    digests = [None] * world
    dist.all_gather_object(digests, checkpoint.weights_digest(model))
    dist.barrier()
    if rank == 0:
        torch.save({"loss": stats[0].item(), "grads": {n: p.grad for n, p in model.named_parameters()},
                    "seen": seen, "same_weights": len(set(digests)) == 1}, out)
    # DDP's reducer goes while the group is still registered, as in the trainer: freed after
    # destroy_process_group, it took the group's last reference and its gloo threads once hung
    # joining in the destructor
    del ddp
    dist.destroy_process_group()


def test_two_ranks_with_micro_batches_equal_one_batch(tiny_model_dir, tmp_path):
    """Global token mean: rank 0 holds 5 completion tokens, rank 1 holds 10; the summed losses
    and DDP-averaged gradients equal one process on all four sequences."""
    from transformers import AutoModelForCausalLM

    from student_worker.rollouts.rollout import Rollout

    out = tmp_path / "rank0.pt"
    spawn_ranks(_rank, str(tiny_model_dir), str(out))
    got = torch.load(out)
    assert got["same_weights"]
    assert {"all_reduce", "all_gather_object", "barrier"} <= set(got["seen"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    rollout = Rollout(PROMPTS, COMPLETIONS, "student")
    loss, grads = _today(model, _method("kd", divergence="reverse_kl"), rollout,
                         _teacher_scores(model.config.vocab_size))
    # each rank reports world x its share of the mean (DDP averages): the trainer divides by world
    assert abs(got["loss"] / 2 - loss.item()) <= 1e-6
    for name, grad in grads.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-6, rtol=0, msg=name)

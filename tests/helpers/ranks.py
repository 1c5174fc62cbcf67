"""Two ranks of one job in fresh processes, as torchrun would start them, and a checker that every
collective of a CPU run would also work under a GPU run's backends."""

from __future__ import annotations

import functools
import gc
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import free_port


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


def _join(rank: int, fn, port: int, world: int, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    fn(rank, *args)
    # the rank's DDP reducers and FSDP states sit in reference cycles: collected after the group
    # is destroyed, their destructors call into a dead gloo context and abort the rank at exit
    # ("terminate called without an active exception"). Collect them while the group lives.
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def spawn_ranks(fn, *args, world: int = 2, timeout: float = 300) -> None:
    """fn(rank, *args) in `world` fresh processes of one job, as torchrun would start them
    (RANK, LOCAL_RANK, WORLD_SIZE and a free port in the environment). A rank that has not
    finished after `timeout` seconds fails the test instead of hanging the suite. `fn` must be
    importable by its module's name (a top-level function of a module under tests/)."""
    ranks = mp.start_processes(_join, args=(fn, free_port(), world, args), nprocs=world,
                               start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout:.0f} s")

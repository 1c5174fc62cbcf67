"""One process per device: the rank's device and the process group, right on CPU and GPU.

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE. On GPUs every rank must pin its own device
(LOCAL_RANK) before any CUDA work: otherwise every rank runs on cuda:0 and NCCL's object
collectives and barriers (which use the current device) all meet there. The group has two
backends, "cpu:gloo,cuda:nccl": NCCL moves GPU tensors (DDP's and FSDP's gradients), gloo moves
CPU ones (a step's statistics, the objects of all_gather_object, barriers); NCCL alone cannot
("No backend type associated with device type cpu").
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def backend_spec(device: torch.device) -> str:
    """The process group's backends for a run whose model lives on `device`."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the torchrun job when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)   # before NCCL starts: its communicator binds to it
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend_spec(device))
    return (dist.get_rank() if world > 1 else 0), world, device


def every_rank(value) -> list:
    """Every rank's `value`, in rank order, on every rank (one all_gather_object); [value] in one
    process. How ranks agree on a decision before a collective that some rank would otherwise
    enter alone (and hang in until the collective's timeout)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def is_node_leader() -> bool:
    """The first rank on this machine (LOCAL_RANK 0): the one that tidies node-local files."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def ranks_per_node() -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE); fewer than the world size means the
    job spans several nodes."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def collective_device(group=None) -> torch.device:
    """The device a collective's tensors must live on for `group`'s backend: NCCL alone takes
    only this rank's GPU; gloo, and "cpu:gloo,cuda:nccl" groups, take CPU tensors."""
    backend = dist.get_backend(group)
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

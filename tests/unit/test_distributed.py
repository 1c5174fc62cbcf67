"""Distributed init without a process group: every rank on its own device, a CPU backend beside
NCCL; and the collective checker the two-rank tests use (tests.helpers.ranks) catches what it must
(the real ranks: tests/e2e/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from student_worker import distributed
from tests.helpers.ranks import check_collectives


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

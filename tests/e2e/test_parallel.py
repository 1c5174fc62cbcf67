"""FSDP2 on two CPU ranks (gloo) against DDP and HSDP: the same losses, a sharded checkpoint that
resumes in one process, sampling before training on uneven ranks (the single-process options:
tests/unit/test_parallel.py)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from student_worker.train.parallel import export_hf, load_sharded, save_sharded, wrap_for_training
from tests.helpers.batches import PROMPTS, reverse_kl_step
from tests.helpers.ranks import spawn_ranks

STEPS = 5


def _fsdp_rank(rank: int, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from student_worker.distributed import init_distributed

    _, world, device = init_distributed()
    rows = slice(2 * rank, 2 * rank + 2)
    losses = {}
    # hsdp: FSDP2 as over two nodes of one rank each (torchrun's LOCAL_WORLD_SIZE = 1): replicated
    # across the "nodes", sharded inside each
    for parallel in ("ddp", "hsdp", "fsdp"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)   # float32: what FSDP2 runs in
        train_model = wrap_for_training(model, parallel="ddp" if parallel == "ddp" else "fsdp", world=world,
                                        device=device, ranks_per_node=1 if parallel == "hsdp" else world)
        if parallel != "ddp":
            losses[f"{parallel}_mesh"] = list(next(model.model.layers.parameters()).device_mesh.shape)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[parallel] = [reverse_kl_step(model, train_model, optimizer, rows, world, micro_batch_size=1)
                            for _ in range(STEPS)]
        loss = torch.tensor(losses[parallel])
        dist.all_reduce(loss)
        losses[parallel] = loss.tolist()
        if parallel == "ddp":
            ddp_weights = {k: v.clone() for k, v in model.state_dict().items()}
    save_sharded(f"{out}/sharded", model, optimizer)
    export_hf(f"{out}/hf", model)
    if rank == 0:
        torch.save({"losses": losses, "ddp_weights": ddp_weights}, f"{out}/rank0.pt")


def test_fsdp_on_two_cpu_ranks_equals_ddp_and_resumes_at_one(tiny_model_dir, tmp_path):
    """FSDP2 works on CPU with gloo (torch 2.13): same losses as DDP over 5 steps, and as HSDP (the
    mesh a job over several nodes gets); its sharded
    checkpoint loads into one unsharded process (another world size) with optimizer states; the
    exported folder is the same model."""
    spawn_ranks(_fsdp_rank, str(tiny_model_dir), str(tmp_path))
    got = torch.load(tmp_path / "rank0.pt")
    ddp, fsdp, hsdp = got["losses"]["ddp"], got["losses"]["fsdp"], got["losses"]["hsdp"]
    assert ddp[-1] < ddp[0]
    assert max(abs(a - b) for a, b in zip(ddp, fsdp)) <= 1e-5, (ddp, fsdp)
    assert max(abs(a - b) for a, b in zip(ddp, hsdp)) <= 1e-5, (ddp, hsdp)
    assert got["losses"]["fsdp_mesh"] == [2] and got["losses"]["hsdp_mesh"] == [2, 1]   # (replicate, shard)

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for name, weight in exported.state_dict().items():
        # Adam divides by sqrt(v): float32 reduction-order noise in a near-zero gradient moves a
        # weight by a fraction of lr (1e-3); the 1e-5 criterion is on the losses above
        torch.testing.assert_close(weight, got["ddp_weights"][name], atol=1e-4, rtol=0, msg=name)
    # world size 1, no process group: the sharded checkpoint restores weights and Adam's moments
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_sharded(tmp_path / "sharded", model, optimizer)
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, exported.state_dict()[name], atol=0, rtol=0, msg=name)
    assert all(optimizer.state[p]["step"].item() == STEPS for p in model.parameters())


def _fsdp_sampling_rank(rank: int, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from student_worker.distributed import init_distributed
    from student_worker.rollouts.sampling import sample

    _, world, device = init_distributed()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    wrap_for_training(model, parallel="fsdp", world=world, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # the rollout comes first (as in on-policy training), and the ranks decode different lengths:
    # the weights are gathered once, in the prefill, so no rank waits for the other's steps
    greedy = sample(model, PROMPTS[rank:rank + 2], max_new_tokens=3 + 5 * rank, temperature=0.0,
                    eos_ids=[-1], pad_id=0)
    sharded_after = all(p.to_local().numel() < p.numel()   # (the root keeps its own after a forward)
                        for p in model.model.layers.parameters())
    loss = reverse_kl_step(model, model, optimizer, slice(2 * rank, 2 * rank + 2), world)   # trains after it
    torch.save({"greedy": [c.token_ids for c in greedy], "sharded_after": sharded_after, "loss": loss},
               f"{out}/rank{rank}.pt")


def test_fsdp_samples_first_on_uneven_ranks_then_trains(tiny_model_dir, tmp_path):
    """On-policy order under FSDP2: a rollout from a model that has not yet run a forward (sampling
    with inference tensors used to break the training step that followed), ranks decoding
    different numbers of tokens, the same greedy tokens as the unsharded model, and the weights
    sharded again for the update."""
    from student_worker.rollouts.sampling import sample

    spawn_ranks(_fsdp_sampling_rank, str(tiny_model_dir), str(tmp_path))
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        expected = sample(reference, PROMPTS[rank:rank + 2], max_new_tokens=3 + 5 * rank, temperature=0.0,
                          eos_ids=[-1], pad_id=0)
        assert got["greedy"] == [c.token_ids for c in expected] and len(got["greedy"][0]) == 3 + 5 * rank
        assert got["sharded_after"] and torch.isfinite(torch.tensor(got["loss"]))

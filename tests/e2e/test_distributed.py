"""Micro-batches over two real ranks (gloo, spawned processes) equal one batch in one process,
and every collective of the step is on a device its backend serves."""

from __future__ import annotations

import torch
import torch.distributed as dist

from student_worker import distributed
from tests.helpers.batches import COMPLETIONS, PROMPTS, method_config, teacher_scores, unchunked_reference
from tests.helpers.ranks import check_collectives, spawn_ranks


def _rank(rank: int, model_dir: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from student_worker.losses import chunked_loss as C
    from student_worker.rollouts.rollout import Rollout, teacher_batch, token_batch
    from student_worker.train import checkpoint
    from student_worker.train.micro_batches import accumulate_gradients

    seen: list[str] = []
    check_collectives(distributed.backend_spec(torch.device("cuda")), seen)
    _, world, device = distributed.init_distributed()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = slice(2 * rank, 2 * rank + 2)   # rank 0: sequences 0, 1; rank 1: sequences 2, 3
    rollout = Rollout(PROMPTS[rows], COMPLETIONS[rows], "student")
    batch = token_batch(rollout, pad_id=0)
    teacher = teacher_batch(teacher_scores(model.config.vocab_size)[rows], rollout, batch.targets_BS.shape[1])
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
    loss, grads = unchunked_reference(model, method_config("kd", divergence="reverse_kl"), rollout,
                         teacher_scores(model.config.vocab_size))
    # each rank reports world x its share of the mean (DDP averages): the trainer divides by world
    assert abs(got["loss"] / 2 - loss.item()) <= 1e-6
    for name, grad in grads.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-6, rtol=0, msg=name)

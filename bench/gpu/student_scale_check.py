"""Students at scale on GPUs: device per rank, collectives, FSDP2 = DDP, chunked-loss memory.

    torchrun --nproc-per-node N bench/gpu/student_scale_check.py     # N GPUs (N = 1 works too)
    python bench/gpu/student_scale_check.py --device cpu --vocab 4096 # CPU smoke run (gloo)

Each rank checks, and rank 0 prints PASS/FAIL per line:
1. device: this rank runs on cuda:LOCAL_RANK (student_worker.distributed.init_distributed);
2. the old bug: an NCCL-only group cannot all_reduce a CPU tensor (what the trainer's step
   statistics did), while the cpu:gloo,cuda:nccl group can, and all_gather_object / barrier
   run on every rank's own device;
3. FSDP2 = DDP: 5 optimizer steps of reverse KL to a random top-k teacher through the chunked
   loss with micro-batches, float32 (TF32 off): losses within 1e-5; then the same with bf16
   autocast (losses within 1e-2, float32 master weights);
4. sampling (student_worker.rollouts.sampling.sample, chosen-token log-probs) from the FSDP2-sharded
   model (weights gathered once per call; ranks decode uneven lengths) gives the unsharded
   model's greedy tokens;
5. LoRA (PEFT) with activation checkpointing and bf16 autocast: only adapters get gradients,
   the loss falls over 5 steps;
6. loss memory on the device: peak memory of the loss over 2,048 positions and a --vocab
   vocabulary (Qwen's 151,936 by default), today's full log-softmax vs chunked.
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from student_worker.config import LoraConfig  # noqa: E402
from student_worker.distributed import backend_spec, init_distributed  # noqa: E402
from student_worker.losses import chunked_loss as C  # noqa: E402
from student_worker.rollouts.sampling import sample  # noqa: E402
from student_worker.train.micro_batches import accumulate_gradients  # noqa: E402
from student_worker.train.parallel import prepare_student, wrap_for_training  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, bool(ok), detail))


def make_batch(rank: int, vocab: int, device, k: int = 16):
    g = torch.Generator().manual_seed(100 + rank)
    lengths, prompt = [40, 25, 33, 17], 8
    T = prompt + max(lengths)
    input_ids_BT = torch.randint(4, vocab, (len(lengths), T), generator=g)
    attention_BT = torch.zeros_like(input_ids_BT)
    mask_BS = torch.zeros(len(lengths), T - 1, dtype=torch.bool)
    for row, n in enumerate(lengths):
        attention_BT[row, :prompt + n] = 1
        mask_BS[row, prompt - 1:prompt + n - 1] = True
    M = int(mask_BS.sum())
    teacher = {"topk_ids_NK": torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(M)]),
               "topk_logprobs_NK": torch.log_softmax(torch.randn(M, k + 1, generator=g), -1)[:, :k],
               "tail_logprobs_N": torch.full((M,), -3.0)}
    move = lambda t: t.to(device)
    return move(input_ids_BT), move(attention_BT), move(mask_BS), {n: move(t) for n, t in teacher.items()}


def train_losses(parallel: str, config, world: int, rank: int, device, autocast, steps: int = 5,
                 lora: LoraConfig | None = None, gradient_checkpointing: bool = False) -> list[float]:
    torch.manual_seed(0)
    model = prepare_student(AutoModelForCausalLM.from_config(config).to(device),
                            gradient_checkpointing=gradient_checkpointing, lora=lora)
    model.train()
    train_model = wrap_for_training(model, parallel=parallel, world=world, device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    input_ids_BT, attention_BT, mask_BS, extras = make_batch(rank, config.vocab_size, device)
    weights_M = C.reduction_weights(mask_BS, "token", C.completion_counts(mask_BS), world)
    losses = []
    for _ in range(steps):
        loss, _ = accumulate_gradients(train_model, model.get_output_embeddings(), input_ids_BT, attention_BT,
                                       mask_BS, C.topk_divergence("reverse_kl"), weights_M, extras,
                                       micro_batch_size=2, chunk_size=16, autocast_dtype=autocast)
        if lora is not None:
            grads = {n for n, p in model.named_parameters() if p.grad is not None}
            check("LoRA: only adapters get gradients", grads and all("lora_" in n for n in grads),
                  f"{len(grads)} tensors")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # the trainer's step statistics: a CPU tensor, summed over ranks
        stats = torch.tensor([loss.item()], dtype=torch.float64)
        dist.all_reduce(stats)
        losses.append(stats.item() / world)
    return losses


def loss_peak(device, vocab: int, positions: int = 2048, hidden: int = 1536, chunk: int = 128) -> dict:
    """Peak device memory (MiB) of the head + loss + backward over `positions`."""
    from student_worker.losses.divergences import divergence

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False).to(device)
    hidden_MH = torch.randn(positions, hidden, generator=g).to(device).requires_grad_()
    ids_MK = torch.randint(0, vocab, (positions, 16), generator=g).to(device)
    lp_MK = torch.full((positions, 16), -3.0, device=device)
    tail_M = torch.full((positions,), -1.0, device=device)
    weights_M = torch.full((positions,), 1 / positions, dtype=torch.float64, device=device)
    out = {}
    for name in ("today", "chunked"):
        head.zero_grad(set_to_none=True)
        hidden_MH.grad = None
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        if name == "today":
            logprobs = torch.log_softmax(head(hidden_MH).float(), -1)[None]
            loss = divergence("reverse_kl", logprobs, teacher_topk_ids_BTK=ids_MK[None],
                              teacher_topk_logprobs_BTK=lp_MK[None], teacher_tail_logprobs_BT=tail_M[None]).mean()
        else:
            loss, _ = C.chunked_loss(hidden_MH, head, C.topk_divergence("reverse_kl"), ids_MK[:, 0], weights_M,
                                     {"topk_ids_NK": ids_MK, "topk_logprobs_NK": lp_MK, "tail_logprobs_N": tail_M},
                                     chunk_size=chunk)
        loss.backward()
        torch.cuda.synchronize(device)
        out[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--vocab", type=int, default=151936)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    rank, world, device = init_distributed()
    if not dist.is_initialized():   # one process: a 1-rank group, so the collectives still run
        dist.init_process_group(backend_spec(device), rank=0, world_size=1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    if device.type == "cuda":
        check("device per rank", torch.cuda.current_device() == local_rank and device.index == local_rank,
              f"rank {rank} on cuda:{torch.cuda.current_device()}")
        nccl_only = dist.new_group(backend="nccl")
        try:
            dist.all_reduce(torch.zeros(1), group=nccl_only)
            check("NCCL-only group refuses a CPU tensor (the old bug)", False, "it did not")
        except (RuntimeError, ValueError) as exc:
            check("NCCL-only group refuses a CPU tensor (the old bug)", True, str(exc).splitlines()[0][:90])
    gathered = [None] * world
    dist.all_gather_object(gathered, (rank, str(device)))
    dist.barrier()
    check("all_gather_object + barrier on every rank's device", gathered[rank] == (rank, str(device)),
          str(gathered))

    config = LlamaConfig(vocab_size=args.vocab if device.type == "cuda" else 4096, hidden_size=128,
                         intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False)
    ddp = train_losses("ddp", config, world, rank, device, None)
    fsdp = train_losses("fsdp", config, world, rank, device, None)
    gap = max(abs(a - b) for a, b in zip(ddp, fsdp))
    check("FSDP2 = DDP over 5 steps, float32 (<= 1e-5)", gap <= 1e-5 and ddp[-1] < ddp[0],
          f"max gap {gap:.2e}; ddp {ddp[0]:.4f} -> {ddp[-1]:.4f}")
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(config).to(device).eval()
    torch.manual_seed(0)
    sharded = wrap_for_training(AutoModelForCausalLM.from_config(config).to(device), parallel="fsdp", world=world,
                                device=device).eval()
    prompts = [[5 + rank, 6, 7, 8], [9, 10 + rank]][: 1 + rank % 2]   # uneven batches over the ranks
    kwargs = dict(max_new_tokens=12 + 4 * rank, temperature=0, eos_ids=[config.vocab_size + 1], pad_id=0)
    same = ([c.token_ids for c in sample(sharded, prompts, **kwargs)]
            == [c.token_ids for c in sample(plain, prompts, **kwargs)])
    check("sampling from the FSDP2 model (gathered once) = unsharded, greedy", same, f"rank {rank}")
    lora = train_losses("ddp", config, world, rank, device, torch.bfloat16 if device.type == "cuda" else None,
                        lora=LoraConfig(r=8, alpha=16), gradient_checkpointing=True)
    check("LoRA + activation checkpointing (+ bf16 on GPU) trains", lora[-1] < lora[0],
          f"{lora[0]:.4f} -> {lora[-1]:.4f}")
    if device.type == "cuda":
        ddp16 = train_losses("ddp", config, world, rank, device, torch.bfloat16)
        fsdp16 = train_losses("fsdp", config, world, rank, device, torch.bfloat16)
        gap16 = max(abs(a - b) for a, b in zip(ddp16, fsdp16))
        check("FSDP2 = DDP, bf16 autocast (<= 1e-2)", gap16 <= 1e-2 and ddp16[-1] < ddp16[0],
              f"max gap {gap16:.2e}; vs float32 {max(abs(a - b) for a, b in zip(ddp, ddp16)):.2e}")
        if rank == 0:
            peaks = loss_peak(device, args.vocab)
            ratio = peaks["today"] / peaks["chunked"]
            check("loss peak memory, 2048 positions (>= 8x lower)", ratio >= 8,
                  f"today {peaks['today']:.0f} MiB, chunked {peaks['chunked']:.0f} MiB: {ratio:.1f}x")
    every_rank = [None] * world
    dist.all_gather_object(every_rank, RESULTS)
    if rank == 0:
        # one line per check: it passes when it passed on every rank (and every repetition)
        verdicts: dict[str, tuple[bool, str]] = {}
        for name, ok, detail in (r for results in every_rank for r in results):
            verdicts[name] = (verdicts.get(name, (True, ""))[0] and ok, verdicts.get(name, (True, detail))[1])
        for name, (ok, detail) in verdicts.items():
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        print("ALL PASS" if all(ok for ok, _ in verdicts.values()) else "SOME FAILED")


if __name__ == "__main__":
    main()
    # the models' DDP reducers and FSDP states (main's locals, and reference cycles) freed while
    # the group lives: collected after it, their destructors call into a dead gloo context and
    # abort the rank at exit ("terminate called without an active exception")
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()

"""The training model and its checkpoints: activation checkpointing, LoRA, DDP or FSDP2.

    prepare_student(model, gradient_checkpointing, lora)   before the optimizer is built
    wrap_for_training(model, parallel, world, device)      DDP, FSDP2 or the model itself

What each option saves, for a student of P parameters with AdamW (float32 master weights and
two optimizer moments: 16 bytes per trained parameter with its gradient):

* gradient_checkpointing: activations of one decoder layer at a time instead of all of them;
  costs one more forward of the decoder in the backward pass.
* LoRA (PEFT): only the adapters train: weights 4P bytes (2P in bf16), gradients and optimizer
  states only for the adapters; checkpoints hold only the adapters.
* FSDP2 (`fully_shard` per decoder layer and the root): weights, gradients and optimizer states
  are split over the ranks (16P / world bytes each); one layer's full weights exist at a time.
  During sampling, `full_weights` keeps each layer's gathered weights for the whole rollout:
  one all-gather per layer per rollout (not per generated token), and the full weights in
  memory while sampling.
* bf16 autocast (micro_batches.accumulate_gradients(autocast_dtype=torch.bfloat16)): matmuls in
  bfloat16, weights, gradients and optimizer states in float32; the loss in float32 (`precision`
  says what student.dtype and student.autocast resolve to; FSDP2 adds its MixedPrecisionPolicy).

Checkpoints: a plain or DDP model is an ordinary Hugging Face folder (checkpoint.py); a LoRA
model saves only its adapters (PEFT's adapter_model.safetensors + adapter_config.json) and
exports merged; an FSDP model saves sharded through torch.distributed.checkpoint (every rank its
shard; loadable at another world size) and exports a full Hugging Face folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.nn.parallel import DistributedDataParallel

from student_worker.config import LoraConfig


def precision(dtype: str, autocast: str, *, lora: bool,
              device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(the weights' dtype, the compute dtype or None) for student.dtype and student.autocast.

    Mixed precision as trainers do it: AdamW updates float32 weights, and the matmuls run in
    bf16 (autocast; under FSDP2 also its MixedPrecisionPolicy). Pure bf16 weights lose the
    updates: bf16 resolves 2^-8 of a weight's size, and an AdamW step at lr 1e-5 is ~1e-5, so
    most weights never move. "auto" weights: float32, except a LoRA student's frozen base on a
    GPU, kept in bf16 (half the memory; PEFT keeps the adapters, the trained part, in float32).
    "auto" compute: bf16 on a GPU, none (float32) on a CPU."""
    gpu = device.type == "cuda"
    weights = (torch.bfloat16 if gpu and lora else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    compute = torch.bfloat16 if autocast == "bfloat16" or (autocast == "auto" and gpu) else None
    return weights, compute


def prepare_student(model: torch.nn.Module, *, gradient_checkpointing: bool = False,
                    lora: LoraConfig | None = None) -> torch.nn.Module:
    """The student ready to train: activation checkpointing on, LoRA adapters added."""
    if gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA), DDP and FSDP without extra hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the classes Hugging Face marks as never to be split."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(base).__name__} to shard with FSDP "
                         "(its _no_split_modules names none)")
    return layers


def wrap_for_training(model: torch.nn.Module, *, parallel: str, world: int, device: torch.device,
                      compute_dtype: torch.dtype | None = None,
                      ranks_per_node: int | None = None) -> torch.nn.Module:
    """DDP (replicas, gradients all-reduced), FSDP2 (every decoder layer and the root sharded
    over the ranks, in place), or the model itself in one process (nothing to shard or average).

    FSDP2 with compute_dtype (bf16): weights all-gathered and computed in bf16, gradients
    reduced in float32 onto the float32 shards the optimizer updates. Over several nodes
    (ranks_per_node < world) it shards inside a node and replicates across nodes (HSDP): the
    per-layer all-gathers and reduce-scatters stay on the fast links, and only one gradient
    all-reduce per step crosses nodes."""
    if parallel == "fsdp" and dist.is_initialized():   # one process without a group: nothing to shard
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        per_node = ranks_per_node or world
        nodes = world // per_node if world % per_node == 0 else 1
        mesh = (init_device_mesh(device.type, (nodes, per_node), mesh_dim_names=("replicate", "shard"))
                if nodes > 1 else None)
        reduce_dtype = torch.float32 if compute_dtype else None
        options = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=reduce_dtype))
        for layer in decoder_layers(model):
            fully_shard(layer, **options)
        fully_shard(model, **options)
        return model
    if world > 1:
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "unshard")   # an FSDP2 module


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """FSDP2: every rank keeps each decoder layer's full weights from its first forward in the
    block to the block's end, instead of gathering them for every forward and freeing them after.

    Sampling runs one forward per generated token: without this, every token costs an all-gather
    per layer and all ranks must decode in lock step. Inside the block the first forward (the
    prefill) gathers each layer once, collectively; after it, ranks run as many forwards as
    their own batch needs. Costs the full weights' memory (in the all-gather's dtype) for the
    block's length. The root module is left alone: FSDP already keeps its parameters (embedding,
    final norm, head) after the forward. Elsewhere (DDP, one process), and nested, a no-op."""
    layers = [m for m in model.modules() if is_sharded(m) and m is not model]
    if not layers or getattr(model, "_holds_full_weights", False):
        yield
        return
    for layer in layers:
        layer.set_reshard_after_forward(False, recurse=False)
    model._holds_full_weights = True
    try:
        yield
    finally:
        model._holds_full_weights = False
        for layer in layers:
            layer.set_reshard_after_forward(True, recurse=False)
            layer.reshard()


# --------------------------------------------------------------------------------------------
# checkpoints


def save_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer states through torch.distributed.checkpoint: every rank writes its
    own shard (collective: all ranks call it). Any world size can load it (`load_sharded`)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=Path(path),
             no_dist=not dist.is_initialized())


def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore `save_sharded`'s weights and optimizer states into this model (sharded over this
    job's ranks, or unsharded in one process), resharding as needed."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=Path(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def export_hf(path: Path, model: torch.nn.Module, tokenizer=None) -> Path | None:
    """The student as an ordinary Hugging Face folder (full weights): a LoRA model merged
    (this consumes its adapters: call it last), an FSDP model gathered to rank 0 on the CPU.
    Collective for FSDP; only rank 0 writes. Returns the folder on rank 0."""
    path = Path(path)
    sharded = is_sharded(model)   # asked first: merging LoRA returns the base model, not FSDP's root
    if hasattr(model, "merge_and_unload"):   # PEFT (under FSDP, merged shard by shard)
        model = model.merge_and_unload()
    state = None
    if sharded:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path

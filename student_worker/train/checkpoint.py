"""Checkpoints: the student as a Hugging Face folder (safetensors) plus the training state.

    DIR/checkpoints/step-000040/   config.json, model.safetensors, tokenizer files  (any HF tool loads it)
                                   trainer_state.pt: the tensors (optimizer moments, torch and CUDA RNG
                                   states; loads with torch.load(weights_only=True))
                                   trainer_state.json: the rest (step, weight digests, scheduler,
                                   optimizer hyperparameters, Python and NumPy RNG states)

With student.lora the folder holds PEFT's adapters (adapter_config.json, adapter_model.safetensors)
instead of the weights; with train.parallel=fsdp a `sharded/` torch.distributed.checkpoint (weights
and optimizer states, every rank its shard) instead of both. The final checkpoint of such a run
also holds `hf/`: the merged (LoRA) or gathered (FSDP) student as an ordinary folder.

train.keep_last=N keeps the newest N checkpoints on disk (stale, remove).

Every rank of a job must see the same checkpoint folders: rank 0 writes the training state and
picks the checkpoint to resume from, and FSDP ranks read each other's shards when resuming, so
the output folder must be on storage every node sees (a shared file system)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

_STEP_DIR = re.compile(r"step-(\d+)$")
STATE_JSON = "trainer_state.json"    # written last: its presence marks a checkpoint complete
STATE_TENSORS = "trainer_state.pt"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step-*") if _STEP_DIR.search(p.name) and (p / STATE_JSON).exists()]
    return sorted(done, key=lambda p: int(_STEP_DIR.search(p.name)[1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    return (checkpoints(output_dir) or [None])[-1]


def stale(output_dir: Path, keep_last: int) -> list[str]:
    """The names of the complete checkpoints older than the newest keep_last (0: none)."""
    return [p.name for p in checkpoints(output_dir)[:-keep_last]] if keep_last else []


def remove(output_dir: Path, names: list[str]) -> None:
    """Delete these checkpoint folders where they exist. Without shared storage each node holds
    its own ranks' shards of them, so every node removes its own; with it, whichever node comes
    first does (the others find them gone)."""
    for name in names:
        shutil.rmtree(Path(output_dir) / "checkpoints" / name, ignore_errors=True)


def readable(path: Path, sharded: bool) -> bool:
    """Whether this process sees the whole checkpoint: its completion mark and, for a sharded
    one, the index of every rank's shards (a rank loads from any rank's shard files)."""
    return (Path(path) / STATE_JSON).exists() and (not sharded or (Path(path) / "sharded" / ".metadata").exists())


def weights_digest(model) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, param in model.state_dict().items():
        h.update(name.encode())
        h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(output_dir: Path, step: int, model, tokenizer, optimizer, scheduler,
         rank_digests: list[str] = ()) -> Path:
    """The student (a PEFT model writes only its adapters) and the training state."""
    path = checkpoint_dir(output_dir, step)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    save_state(path, step, scheduler, optimizer, rank_digests)
    return path


def save_state(path: Path, step: int, scheduler, optimizer=None, rank_digests: list[str] = ()) -> None:
    """The training state: step, scheduler, RNG states and (unless it is saved sharded) the
    optimizer's. trainer_state.json is written last: its presence marks the checkpoint complete."""
    path = Path(path)
    tensors = {"rng_torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
    numpy_rng = np.random.get_state(legacy=False)
    numpy_rng["state"]["key"] = numpy_rng["state"]["key"].tolist()
    state = {
        "step": step,
        "rank_weight_digests": list(rank_digests),  # one per worker, all equal
        "scheduler": scheduler.state_dict(),
        "rng_python": random.getstate(),
        "rng_numpy": numpy_rng,
    }
    if optimizer is not None:
        optim = optimizer.state_dict()
        tensors["optimizer"] = optim["state"]
        state["optimizer_param_groups"] = optim["param_groups"]
    torch.save(tensors, path / STATE_TENSORS)
    (path / STATE_JSON).write_text(json.dumps(state))


def hf_folder(path: Path) -> Path:
    """The checkpoint as an ordinary Hugging Face folder: its `hf/` export (a LoRA or FSDP
    run's final checkpoint) or the checkpoint itself."""
    return Path(path) / "hf" if (Path(path) / "hf").is_dir() else Path(path)


def load_state(path: Path, optimizer, scheduler) -> int:
    """Restore optimizer (unless saved sharded), scheduler and RNG states (the weights come from
    from_pretrained, PEFT's adapters or the sharded checkpoint)."""
    path = Path(path)
    state = json.loads((path / STATE_JSON).read_text())
    # on the CPU first: saved from rank 0's GPU, the tensors would otherwise all land on cuda:0;
    # the optimizer moves its states to each parameter's own device
    tensors = torch.load(path / STATE_TENSORS, weights_only=True, map_location="cpu")
    if "optimizer" in tensors:
        optimizer.load_state_dict({"state": tensors["optimizer"],
                                   "param_groups": state["optimizer_param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng_torch"])
    if "rng_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["rng_cuda"][:torch.cuda.device_count()])
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_rng = state["rng_numpy"]
    numpy_rng["state"]["key"] = np.array(numpy_rng["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_rng)
    return state["step"]

"""Checkpoints: the student as a Hugging Face folder (safetensors) plus the training state.

    DIR/checkpoints/step-000040/   config.json, model.safetensors, tokenizer files  (any HF tool loads it)
                                   trainer_state.pt: optimizer, scheduler, RNG states, step

With student.lora the folder holds PEFT's adapters (adapter_config.json, adapter_model.safetensors)
instead of the weights; with train.parallel=fsdp a `sharded/` torch.distributed.checkpoint (weights
and optimizer states, every rank its shard) instead of both. The final checkpoint of such a run
also holds `hf/`: the merged (LoRA) or gathered (FSDP) student as an ordinary folder.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import torch

_STEP_DIR = re.compile(r"step-(\d+)$")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step-*") if _STEP_DIR.search(p.name) and (p / "trainer_state.pt").exists()]
    return max(done, key=lambda p: int(_STEP_DIR.search(p.name)[1]), default=None)


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
    """trainer_state.pt: step, scheduler, RNG states and (unless it is saved sharded) the
    optimizer's. Written last: its presence marks the checkpoint complete."""
    state = {
        "step": step,
        "rank_weight_digests": list(rank_digests),  # one per worker, all equal
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": np.random.get_state()},
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, Path(path) / "trainer_state.pt")


def hf_folder(path: Path) -> Path:
    """The checkpoint as an ordinary Hugging Face folder: its `hf/` export (a LoRA or FSDP
    run's final checkpoint) or the checkpoint itself."""
    return Path(path) / "hf" if (Path(path) / "hf").is_dir() else Path(path)


def load_state(path: Path, optimizer, scheduler) -> int:
    """Restore optimizer (unless saved sharded), scheduler and RNG states (the weights come from
    from_pretrained, PEFT's adapters or the sharded checkpoint)."""
    state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state["step"]

"""Checkpoints: the student as a Hugging Face folder (safetensors) plus the training state.

    DIR/checkpoints/step-000040/   config.json, model.safetensors, tokenizer files  (any HF tool loads it)
                                   trainer_state.pt: the tensors (optimizer moments, torch and CUDA RNG
                                   states; loads with torch.load(weights_only=True))
                                   trainer_state.json: the rest (step, weight digests, scheduler,
                                   optimizer hyperparameters, Python and NumPy RNG states)

train.keep_last=N keeps the newest N checkpoints on disk (rotate).
"""

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


def rotate(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last complete checkpoints (0: keep all)."""
    if keep_last:
        for old in checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)


def weights_digest(model) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, param in model.state_dict().items():
        h.update(name.encode())
        h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(output_dir: Path, step: int, model, tokenizer, optimizer, scheduler,
         rank_digests: list[str] = ()) -> Path:
    path = checkpoint_dir(output_dir, step)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    optim = optimizer.state_dict()
    tensors = {"optimizer": optim["state"], "rng_torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
    torch.save(tensors, path / STATE_TENSORS)
    numpy_rng = np.random.get_state(legacy=False)
    numpy_rng["state"]["key"] = numpy_rng["state"]["key"].tolist()
    state = {
        "step": step,
        "rank_weight_digests": list(rank_digests),  # one per worker, all equal
        "optimizer_param_groups": optim["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_python": random.getstate(),
        "rng_numpy": numpy_rng,
    }
    (path / STATE_JSON).write_text(json.dumps(state))
    return path


def load_state(path: Path, optimizer, scheduler) -> int:
    """Restore optimizer, scheduler and RNG states (the weights come from from_pretrained)."""
    path = Path(path)
    state = json.loads((path / STATE_JSON).read_text())
    tensors = torch.load(path / STATE_TENSORS, weights_only=True)
    optimizer.load_state_dict({"state": tensors["optimizer"], "param_groups": state["optimizer_param_groups"]})
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

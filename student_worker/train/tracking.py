"""Experiment trackers: `train.report_to` names where the numbers of metrics.jsonl also go.

    tensorboard  DIR/tensorboard                      pip install -e '.[tracking]' (make setup does)
    wandb        a W&B run named after DIR, files in DIR/wandb; WANDB_MODE=offline keeps it local,
                 WANDB_PROJECT picks the project (default: distill)           pip install wandb
    mlflow       an MLflow run in MLFLOW_TRACKING_URI (default: the local file store DIR/mlruns),
                 experiment MLFLOW_EXPERIMENT_NAME (default: distill)          pip install mlflow-skinny

Each start of a run (a --resume too) opens a new tracker run; the step numbers carry on.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Protocol

from student_worker.config import RunConfig

# the versions this project is tested with (pyproject.toml's `tracking` extra)
_PACKAGES = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.31.0", "mlflow": "mlflow-skinny==3.17.2"}


class Tracker(Protocol):
    def log(self, numbers: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _import(module: str, tracker: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"train.report_to={tracker} needs the {tracker} package: "
                         f"pip install '{_PACKAGES[tracker]}'") from exc


class TensorBoard:
    def __init__(self, output_dir: Path, cfg: RunConfig):
        _import("tensorboard", "tensorboard")   # torch's writer imports it lazily, with a vaguer error
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(output_dir / "tensorboard")

    def log(self, numbers: dict[str, float], step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, output_dir: Path, cfg: RunConfig):
        from student_worker.train.run_record import recorded

        wandb = _import("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "distill"), name=output_dir.name,
                              dir=output_dir, config=recorded(cfg))

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, output_dir: Path, cfg: RunConfig):
        from student_worker.train.run_record import flat_config

        mlflow = _import("mlflow", "mlflow")
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # MLflow 3 keeps its file store for those who ask for it; it needs no server or database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((output_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "distill"))
        self.mlflow, self.run = mlflow, mlflow.start_run(run_name=output_dir.name)
        mlflow.log_params(flat_config(cfg))

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS: dict[str, Callable[[Path, RunConfig], Tracker]] = {
    "tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


class Trackers:
    """Every tracker of cfg.train.report_to, fed one metrics record at a time."""

    def __init__(self, output_dir: Path, cfg: RunConfig):
        self.trackers = [TRACKERS[name](Path(output_dir), cfg) for name in cfg.train.report_to]

    def log(self, record: dict) -> None:
        numbers = {key: float(value) for key, value in record.items()
                   if isinstance(value, (int, float)) and key != "step"}
        for tracker in self.trackers:
            tracker.log(numbers, record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

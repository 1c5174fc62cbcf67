"""What a run records, without a run: a tracker whose package is missing says what to install
(the runs themselves: tests/integration/test_run_record.py)."""

import sys

import pytest

from student_worker.config import load_config


def test_a_missing_tracker_package_says_what_to_install(tmp_path, monkeypatch):
    from student_worker.train.tracking import Trackers

    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb now raises ImportError
    cfg = load_config(None, "sft", ["student.path=s", "data.source=reverse", "train.report_to=wandb"])
    with pytest.raises(SystemExit, match="train.report_to=wandb needs the wandb package: pip install 'wandb=="):
        Trackers(tmp_path, cfg)

"""sampling.engine=vllm refused where it cannot serve: skd's drafts need the student's full
distributions (the engine itself: tests/e2e/test_vllm_sampling.py)."""

import pytest

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.train.trainer import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-vllm", preset="tiny-vllm")


def test_skd_drafts_refuse_the_vllm_engine(teacher, model_dir, data_file, tmp_path):
    cfg = load_config(None, "skd", [f"student.path={model_dir}", f"teacher.target={teacher.target}",
                                    f"data.source={data_file}", "sampling.engine=vllm"])
    with pytest.raises(SystemExit, match="use sampling.engine=hf"):
        train(cfg, tmp_path)

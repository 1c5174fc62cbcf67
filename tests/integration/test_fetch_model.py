"""scripts/fetch_model.py as a command, without the network: a finished folder is reused (the
rest: tests/unit/test_fetch_model.py)."""

import subprocess
import sys


def test_a_finished_folder_is_reused_and_its_path_is_the_last_line(tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    done = subprocess.run([sys.executable, "-m", "scripts.fetch_model", "smollm2-135m-instruct"],
                          capture_output=True, text=True, timeout=60,
                          env={"DISTILL_CACHE": str(tmp_path), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(tmp_path / "smollm2-135m-instruct")
    assert "downloading" not in done.stderr

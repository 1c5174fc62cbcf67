"""The worker's configuration at the command line, in a process of its own: a bad override is a
usage error, not a traceback (the configuration alone: tests/unit/test_config.py)."""

import subprocess
import sys

from tests.helpers import ROOT

REQUIRED = ["student.path=s", "teacher.target=t:1", "data.source=reverse"]


def test_a_bad_command_line_is_a_usage_error_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "student_worker", "--output-dir", "x", *REQUIRED,
                           "optim.lr=abc"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "usage: python -m student_worker" in done.stderr and "optim.lr" in done.stderr

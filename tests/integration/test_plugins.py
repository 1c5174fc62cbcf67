"""A method registered outside the package, trained from the command line through --plugin."""

import subprocess
import sys

from tests.helpers import ROOT


def test_a_method_registered_by_a_plugin_is_usable_from_the_command_line(tmp_path):
    (tmp_path / "my_methods.py").write_text(
        "from student_worker.methods import Method, TeacherSamples, TopKDivergence, register_method\n"
        "register_method(Method('teacher-rkl', TeacherSamples(), TopKDivergence('reverse_kl')))\n")
    command = [sys.executable, "-m", "student_worker", "--print-config", "student.path=s", "teacher.target=t:1",
               "data.source=reverse", "method.name=teacher-rkl"]
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert refused.returncode == 2 and "method.name: Input should be one of" in refused.stderr, refused.stderr
    accepted = subprocess.run([*command, "--plugin", "my_methods"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert accepted.returncode == 0 and "name: teacher-rkl" in accepted.stdout, accepted.stderr[-2000:]

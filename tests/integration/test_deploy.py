"""The health probe the images run (distill.client.probe) against real servers: its exit codes
follow the health status, over TLS too, and the teacher image's HEALTHCHECK command as it runs."""

import asyncio
import shutil
import subprocess

import pytest

from distill.client import probe
from teacher_server.config import ServerSettings
from teacher_server.server import TeacherServer
from tests.helpers import ROOT
from tests.helpers.dockerfiles import exec_form, image_env


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

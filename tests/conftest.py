"""Shared fixtures: tiny random-weight models on disk and real teacher servers on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.tiny_model import make_tiny_model

torch.set_num_threads(1)  # the test process shares 2 cores with the servers it starts

_LISTENING = re.compile(r"listening: grpc (\S+):(\d+) http (\S+):(\d+)")


class TeacherProcess:
    """`python -m teacher_server` as a real child process on 127.0.0.1 with free ports."""

    def __init__(self, model_dir, *args: str, env: dict | None = None):
        cmd = [sys.executable, "-m", "teacher_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--num-threads", "1",
               *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        listening = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.grpc_port, self.http_port = int(match[2]), int(match[4])
                    listening.set()

        threading.Thread(target=pump, daemon=True).start()
        if not listening.wait(120):
            self.proc.kill()
            raise RuntimeError("teacher did not start:\n" + "".join(self.lines))
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"

    def wait_serving(self, timeout: float = 120) -> None:
        """Block on the standard health Watch stream until it says SERVING."""
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def teacher(tiny_model_dir):
    """One server for the session. Small message limit so the over-size test stays cheap;
    a wait long enough that concurrent test requests really get merged."""
    server = TeacherProcess(tiny_model_dir, "--max-message-mb", "4", "--max-wait-ms", "20",
                            "--max-batch-tokens", "2048")
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


@pytest.fixture(scope="session")
def client(teacher):
    from student_worker.teacher_client import TeacherClient

    with TeacherClient(teacher.target, timeout=60) as c:
        yield c


def reference_logprobs(model, ids: list[int] | torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1 .. T-1 from a plain in-process forward: [T-1, V]."""
    ids = torch.as_tensor(ids)
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1].double()
    return torch.log_softmax(logits / temperature, dim=-1)


def random_sequences(n: int, lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(lengths[i % len(lengths)]),), generator=g).tolist()
            for i in range(n)]

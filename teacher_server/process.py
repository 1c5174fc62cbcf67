"""Run `python -m teacher_server` as a child process on free ports and wait until it serves.

Used by tests, benchmarks and demos: the real server, over the network, on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Set by TeacherProcess (tests, demos, benchmarks) to its pid, for the server it starts.
PARENT_PID_ENV = "DISTILL_PARENT_PID"


def die_with_parent() -> None:
    """In the server (`python -m teacher_server` calls it first), on Linux: get SIGTERM when the
    TeacherProcess that started it dies, even by SIGKILL, so an interrupted test or demo leaves
    no teacher behind. Done after exec: in the parent, between fork and exec, nothing but exec
    is safe while gRPC's threads run."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):     # it died before prctl took effect
        sys.exit(0)


_LISTENING = re.compile(r"listening: grpc (\S+):(\d+) http (\S+):(\d+)")


class TeacherProcess:
    """`python -m teacher_server` as a child process on 127.0.0.1 with free ports (1 torch thread)."""

    def __init__(self, model_dir, *args: str, env: dict | None = None,
                 credentials: grpc.ChannelCredentials | None = None, start_timeout: float = 120):
        cmd = [sys.executable, "-m", "teacher_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--num-threads", "1",
               *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())})
        self.lines: list[str] = []
        self.credentials = credentials   # for wait_serving, when the server uses TLS
        listening = threading.Event()
        self._logged = threading.Condition()

        def pump():
            for line in self.proc.stdout:
                with self._logged:
                    self.lines.append(line)
                    self._logged.notify_all()
                match = _LISTENING.search(line)
                if match:
                    self.grpc_port, self.http_port = int(match[2]), int(match[4])
                    listening.set()
            listening.set()   # the output ended: the server exited (bad flag, ...); no need to wait

        threading.Thread(target=pump, daemon=True).start()
        if not listening.wait(start_timeout) or not hasattr(self, "grpc_port"):
            self.proc.kill()
            raise RuntimeError("teacher did not start:\n" + "".join(self.lines))
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"

    def wait_serving(self, timeout: float = 120) -> None:
        """Block on the standard health Watch stream until it says SERVING."""
        channel = (grpc.secure_channel(self.target, self.credentials) if self.credentials
                   else grpc.insecure_channel(self.target))
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Block until the server has logged a line containing `text`."""
        with self._logged:
            if not self._logged.wait_for(lambda: any(text in line for line in self.lines), timeout):
                raise TimeoutError(f"the teacher did not log {text!r}:\n{self.log()}")

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

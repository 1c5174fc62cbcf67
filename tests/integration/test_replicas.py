"""Teacher replicas, for real on 127.0.0.1: one run over two replicas, one of which dies mid-call;
calls fail over from a frozen or killed replica; least-work routing keeps calls off a busy replica
(one job over two torchrun nodes: tests/e2e/test_torchrun.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distill.client.teacher_client import TeacherClient
from tests.helpers import TeacherProcess, worker_cmd


def scores_served(server: TeacherProcess) -> float:
    """Score calls the server answered OK, from its /metrics (summed over any other labels, such
    as the tenant)."""
    families = text_string_to_metric_families(httpx.get(f"{server.http}/metrics", timeout=10).text)
    return sum(s.value for family in families if family.name == "teacher_requests"
               for s in family.samples if s.name == "teacher_requests_total"
               and s.labels["rpc"] == "Score" and s.labels["code"] == "OK")


def steps_done(output_dir) -> list[int]:
    path = output_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def unread_request_bytes(port: int) -> int:
    """Bytes that clients sent to a server on `port` and it has not read yet, from Linux's socket
    tables (gRPC's sockets are IPv6 ones even on 127.0.0.1, so both tables)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, _, state, queues = line.split()[1:5]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":   # 01: ESTABLISHED
                total += int(queues.split(":")[1], 16)                         # rx_queue
    return total


def poll(condition, what: str, timeout: float = 120) -> None:
    """Wait until condition() holds (checked every 50 ms); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g} s"
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_a_teacher_replica_killed_mid_call_loses_no_step(tiny_model_dir, student_dir, data_file, tmp_path):
    a, b = TeacherProcess(tiny_model_dir), TeacherProcess(tiny_model_dir)
    steps = 20
    worker = None
    with open(tmp_path / "worker.log", "w") as log:
        try:
            a.wait_serving(), b.wait_serving()
            worker = subprocess.Popen(
                [sys.executable, "-m", *worker_cmd(student_dir, f"{a.target},{b.target}", data_file,
                                                    tmp_path / "run", f"train.steps={steps}",
                                                    "teacher.routing=round_robin")],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            # round_robin: both replicas serve; once each has answered a few calls, freeze a, so
            # that the next call round_robin gives it stays unanswered, and kill a only once that
            # call's bytes sit unread in its socket: the kill lands on a call in flight.
            poll(lambda: worker.poll() is not None or min(scores_served(a), scores_served(b)) >= 3,
                 "3 Score calls served by each replica")
            served_by_a, served_by_b = scores_served(a), scores_served(b)
            a.proc.send_signal(signal.SIGSTOP)
            poll(lambda: worker.poll() is not None or unread_request_bytes(a.grpc_port) > 0,
                 "call waiting on the frozen replica", timeout=60)
            steps_at_kill = len(steps_done(tmp_path / "run"))
            a.proc.kill()
            a.proc.wait()
            assert worker.wait(300) == 0, (tmp_path / "worker.log").read_text()
            assert scores_served(b) > served_by_b   # b took over a's share, the call in flight included
        finally:
            if worker and worker.poll() is None:
                worker.kill()
            a.proc.kill()
            if b.proc.poll() is None:
                b.terminate()
    assert served_by_a >= 3 and served_by_b >= 3
    assert steps_at_kill < steps, "the run ended before the kill: make it longer"
    assert steps_done(tmp_path / "run") == list(range(1, steps + 1))
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{steps:06d}" / "trainer_state.json").read_text())
    assert state["step"] == steps


@pytest.mark.parametrize("routing", ["least_work", "round_robin"])
def test_calls_fail_over_from_a_frozen_replica(tiny_model_dir, routing):
    """A replica that stops answering (SIGSTOP: connected, silent) is found by the client's
    keepalive pings; calls sent to it move to the live replica long before their deadline."""
    servers = [TeacherProcess(tiny_model_dir) for _ in range(2)]
    frozen = servers[0]
    try:
        for s in servers:
            s.wait_serving()
        with TeacherClient([s.target for s in servers], timeout=120, keepalive_s=2, routing=routing) as client:
            for _ in range(4):           # connections to both replicas are up and used
                client.score([list(range(20))], 1, top_k=2)
            assert all(scores_served(s) >= 1 for s in servers)
            frozen.proc.send_signal(signal.SIGSTOP)
            start = time.monotonic()
            for _ in range(6):
                assert client.score([list(range(20))], 1, top_k=2)[0].topk_ids.shape == (19, 2)
            elapsed = time.monotonic() - start
        assert elapsed < 20, f"6 calls took {elapsed:.1f} s with one replica frozen"
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        for s in servers:
            assert s.terminate() == 0, s.log()


def test_least_work_routing_keeps_calls_off_a_busy_replica(tiny_model_dir):
    """Replica b is kept busy by another client; one client's calls over both replicas go mostly
    to the idle a under least_work (b's answers report its queue), and half to each under
    round_robin. Counted by the servers' own /metrics."""
    idle, busy = TeacherProcess(tiny_model_dir), TeacherProcess(tiny_model_dir)
    stop = threading.Event()
    try:
        idle.wait_serving(), busy.wait_serving()

        def other_job() -> None:   # two calls always queued on b
            with TeacherClient(busy.target) as other:
                while not stop.is_set():
                    other.score([list(range(40))] * 64, 1, top_k=4)

        others = [threading.Thread(target=other_job) for _ in range(2)]
        for thread in others:
            thread.start()
        poll(lambda: scores_served(busy) >= 2, "the other job's calls on b")
        served = {}
        for routing in ("least_work", "round_robin"):
            before = scores_served(idle), scores_served(busy)
            with TeacherClient(f"{idle.target},{busy.target}", routing=routing) as client:
                for _ in range(20):
                    client.score([list(range(20))], 1, top_k=2)
            served[routing] = scores_served(idle) - before[0]
        # least_work: one call to b at most, to learn its pace (both start unknown)
        assert served["least_work"] >= 19, served
        assert served["round_robin"] <= 15, served   # gRPC alternates once both are connected
    finally:
        stop.set()
        for thread in others:
            thread.join(60)
        for s in (idle, busy):
            assert s.terminate() == 0, s.log()


def test_least_work_follows_a_dns_name_and_skips_a_killed_replica(tiny_model_dir):
    """A dns:/// target is resolved by the client (localhost: its addresses; the server listens
    on one of them, the other is down from the start), and a replica killed between calls is
    passed over: every call succeeds and b serves the rest."""
    a, b = TeacherProcess(tiny_model_dir), TeacherProcess(tiny_model_dir)
    try:
        a.wait_serving(), b.wait_serving()
        with TeacherClient(f"dns:///localhost:{a.grpc_port}", timeout=30) as client:
            assert client.score([list(range(10))], 1, top_k=2)[0].topk_ids.shape == (9, 2)
            assert any(r.answers for r in client.router.replicas)
        with TeacherClient(f"{a.target},{b.target}", timeout=30) as client:
            for _ in range(4):
                client.score([list(range(10))], 1, top_k=2)
            a.proc.kill()
            a.proc.wait()
            served_by_b = scores_served(b)
            start = time.monotonic()
            for _ in range(5):
                assert client.score([list(range(10))], 1, top_k=2)[0].topk_ids.shape == (9, 2)
            assert time.monotonic() - start < 10
        assert scores_served(b) == served_by_b + 5
    finally:
        a.proc.kill()
        assert b.terminate() == 0, b.log()


def test_verify_sessions_stay_on_the_replica_that_holds_their_caches(tiny_model_dir, tmp_path):
    """Speculative decoding over two idle replicas: every round after the first goes where the
    sessions' caches are (each sequence misses once, then always hits), summed over both."""
    from transformers import AutoModelForCausalLM

    from scripts.tiny_model import make_tiny_model
    from student_worker.rollouts.speculative import speculative_generate
    from tests.helpers import random_sequences
    from tests.helpers.servers import metric_families

    def total(name: str) -> float:
        return sum(s.value for server in (a, b) for s in metric_families(server)[name].samples
                   if s.name == f"{name}_total")

    draft = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "draft", seed=5)).eval()
    a, b = TeacherProcess(tiny_model_dir), TeacherProcess(tiny_model_dir)
    try:
        a.wait_serving(), b.wait_serving()
        with TeacherClient(f"{a.target},{b.target}", routing="least_work", timeout=30) as client:
            results = speculative_generate(draft, client, random_sequences(3, [12], 512, seed=8), gamma=3,
                                           max_new_tokens=30, mode="topk", accept_top_k=2, eos_ids=[2], pad_id=0,
                                           seed=0)
        rounds = sum(r.teacher_calls for r in results)
        assert rounds > 3 * 3
        assert total("teacher_session_misses") == 3
        assert total("teacher_session_hits") == rounds - 3
    finally:
        for server in (a, b):
            assert server.terminate() == 0, server.log()

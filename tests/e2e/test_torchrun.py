"""The worker under torchrun against a real teacher server: two workers on one node, and one job
over two torchrun "nodes" joined by a c10d rendezvous; the replicas end with identical weights."""

import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from tests.helpers import free_port, worker_cmd


def test_torchrun_two_workers_hold_identical_weights(teacher, student_dir, data_file, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           *worker_cmd(student_dir, teacher.target, data_file, tmp_path, "train.steps=3")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    final = tmp_path / "checkpoints" / "step-000003"
    digests = json.loads((final / "trainer_state.json").read_text())["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not torch.equal(model.lm_head.weight, AutoModelForCausalLM.from_pretrained(student_dir).lm_head.weight)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in lines] == [4, 4, 4]   # 2 prompts on each of 2 ranks


def test_two_torchrun_nodes_hold_identical_weights(teacher, student_dir, data_file, tmp_path):
    """Two launches of `torchrun --nnodes 2 --nproc-per-node 1`, as on two machines; the c10d
    rendezvous gives them their node ranks."""
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
           "--local-addr", "127.0.0.1", "-m",
           *worker_cmd(student_dir, teacher.target, data_file, tmp_path / "run", "train.steps=3")]
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    nodes = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for log in logs]
    try:
        codes = [node.wait(300) for node in nodes]
    finally:
        for node, log in zip(nodes, logs):
            if node.poll() is None:
                node.kill()
            log.close()
    assert codes == [0, 0], "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    digests = state["rank_weight_digests"]   # each rank's sha256 of its weights, gathered at the end
    assert len(digests) == 2 and digests[0] == digests[1]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    samples = [json.loads(line)["samples"] for line in lines]
    assert samples == [4, 4, 4]   # 2 prompts on each node

"""What the ranks of one job must agree on, on two CPU ranks through the real training loop: the
checkpoint to resume from, a teacher failure seen by one rank, and which checkpoints to delete on
every node. Each used to hang the job (ranks in different collectives) or fill a node's disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from student_worker.train import checkpoint
from tests.helpers import TeacherProcess, worker_config, write_tenants
from tests.helpers.ranks import spawn_ranks

COMMON = ["train.steps=3", "data.batch_size=2", "teacher.top_k=8", "train.parallel=fsdp"]


def _exit_message(call) -> str:
    """The SystemExit message of call(), or '' when it returned."""
    try:
        call()
    except SystemExit as exc:
        return str(exc)
    return ""


def _resume_without_shared_storage(rank: int, student: str, target: str, data: str, out: str) -> None:
    from student_worker.train.trainer import train

    train(worker_config(student, target, data, *COMMON, "train.stop_after=2", preset="kd"), f"{out}/shared",
          progress=False)
    # the second node's copy of the folder: the checkpoint's folder is there, its shards are not
    if rank == 0:
        shutil.copytree(f"{out}/shared", f"{out}/node1")
        shutil.rmtree(f"{out}/node1/checkpoints/step-000002/sharded")
    torch.distributed.barrier()
    folder = f"{out}/shared" if rank == 0 else f"{out}/node1"
    message = _exit_message(lambda: train(worker_config(student, target, data, *COMMON, preset="kd"), folder,
                                          resume=True, progress=False))
    torch.save(message, f"{out}/rank{rank}.pt")


def test_ranks_resume_from_rank_0s_checkpoint_or_say_storage_must_be_shared(teacher, student_dir, data_file,
                                                                           tmp_path):
    spawn_ranks(_resume_without_shared_storage, str(student_dir), teacher.target, str(data_file), str(tmp_path),
                timeout=180)
    for rank in range(2):   # both ranks stop, before any step, with the same reason
        message = torch.load(tmp_path / f"rank{rank}.pt")
        assert "rank(s) [1] do not see all of it" in message and "shared file system" in message, message
    steps = [json.loads(x)["step"] for x in (tmp_path / "shared" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


TOKENS = {"full": "secret-full", "info-only": "secret-info"}


@pytest.fixture(scope="module")
def tenant_teacher(tiny_model_dir, tmp_path_factory):
    """A teacher whose tenant "info-only" may only ask Info: its Score calls are refused."""
    tenants = write_tenants(tmp_path_factory.mktemp("tenants") / "tenants.yaml", *[
        {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
         "rpcs": ["Info"] if name == "info-only" else ["Score", "Verify", "Generate", "Info"]}
        for name, token in TOKENS.items()])
    server = TeacherProcess(tiny_model_dir, "--tenants", str(tenants))
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


def _one_rank_refused(rank: int, student: str, target: str, data: str, out: str) -> None:
    from student_worker.train.trainer import train

    # each rank its own node (LOCAL_RANK 0 on both) and its own disk for the checkpoints' shards
    os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="2")
    rotation = worker_config(student, target, data, *COMMON, "train.save_every=1", "train.keep_last=1",
                      f"teacher.api_key={TOKENS['full']}", preset="kd")
    train(rotation, f"{out}/rotation/node{rank}", progress=False)
    key = TOKENS["info-only" if rank == 1 else "full"]   # rank 1's Score calls are refused
    message = _exit_message(lambda: train(worker_config(student, target, data, *COMMON, f"teacher.api_key={key}",
                                                 preset="kd"), f"{out}/refused", progress=False))
    torch.save(message, f"{out}/rank{rank}.pt")


def test_a_teacher_failure_on_one_rank_stops_every_rank_and_every_node_rotates(tenant_teacher, student_dir,
                                                                                data_file, tmp_path):
    spawn_ranks(_one_rank_refused, str(student_dir), tenant_teacher.target, str(data_file), str(tmp_path),
                timeout=180)
    refused, stopped = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (1, 0))
    assert "PERMISSION_DENIED" in refused and "Checkpoint at step 0" in refused, refused
    assert "the teacher call of rank 1 failed" in stopped and "Checkpoint at step 0" in stopped, stopped
    assert checkpoint.latest_checkpoint(tmp_path / "refused").name == "step-000000"   # saved together
    # train.keep_last=1: only the newest checkpoint is left on either node, shards included
    for node in range(2):
        kept = sorted(p.name for p in (tmp_path / "rotation" / f"node{node}" / "checkpoints").iterdir())
        assert kept == ["step-000003"], (node, kept)
        assert list((tmp_path / "rotation" / f"node{node}" / "checkpoints" / "step-000003" / "sharded").glob(
            f"__{node}_*.distcp")), node

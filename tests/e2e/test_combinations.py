"""The options users combine, trained together: the real worker loop on two CPU ranks (gloo)
against the real teacher server, 3 steps a run, over a pairwise covering design of method (every
preset) x train.parallel x LoRA x sampling.engine x train.lag x train.pipeline_halves x
micro-batches x activation checkpointing x precision (float32, bf16 autocast, pure bf16) x data
(JSONL, or a distill-score cache of it) x teachers (one, or two named ones): every pair of option
values appears together in at least one run. Each run either trains (finite
losses at steps 1, 2, 3, a final checkpoint that loads as a Hugging Face model, weights moved) or
is refused before any step with a message naming the offending option, as REFUSALS declares
(the design: tests.helpers.combinations, checked by tests/unit/test_combination_design.py).

Cost: a `torchrun` launch costs ~8 s here (two ranks importing torch and transformers), ~45 s
when each rank starts a vLLM engine. So the design runs in two spawned ranks that call
`trainer.train` once per run in one process group (~35 s for all of it on two cores), each rank
keeping one vLLM engine per compute dtype across its runs (every run still syncs its own
weights into it at start and after each step). The stop/`--resume` legs, one per parallel mode,
go through the real `torchrun -m student_worker`.
"""

from __future__ import annotations

import datetime
import faulthandler
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scripts.tiny_model import make_tiny_model
from student_worker.tools import score_file
from student_worker.train import checkpoint
from tests.helpers.combinations import COMMON, DESIGN, NAMES, overrides, refused_options
from tests.helpers.ranks import spawn_ranks

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------------------------
# the design on two spawned ranks


@pytest.fixture(scope="module")
def vllm_student(tmp_path_factory):
    """A student vLLM can run (head_dim 32: vLLM's CPU attention needs >= 32) with the
    teacher's tokenizer."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "student", preset="tiny-vllm", seed=1)


def _await_peer(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _design_ranks(rank: int, names: list[str], runs: list[dict], student: str, target: str, data: str,
                  score_cache: str, out: str) -> None:
    """Every run of the design, one after another, in one process group. A run's outcome on
    this rank goes to OUT/NAME.rankR.json: trained, refused (SystemExit: the message) or crashed
    (the traceback). The ranks meet after each run through those files, not a collective, so a
    run that crashed on both ranks leaves the group usable for the next; a rank whose peer does
    not arrive (it hangs in a collective the crashed rank never joined) stops there."""
    import torch.distributed as dist

    import student_worker.rollouts.vllm_sampling as vllm_sampling
    from student_worker.config import load_config
    from student_worker.train.trainer import train

    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1",
                      VLLM_CACHE_ROOT=f"{out}/vllm-cache-{rank}")
    # a collective that waits for a crashed peer fails after a minute instead of half an hour
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    engines: dict[str, object] = {}
    engine_class = vllm_sampling.VllmSampler

    def shared_engine(model_dir, **options):
        """The rank's engine for the run's dtype, started once (every run reads the same
        architecture); start_sampler still syncs the run's own weights into it."""
        if options["dtype"] not in engines:
            engine = engines[options["dtype"]] = engine_class(model_dir, **options)
            engine.close, engine.really_close = (lambda: None), engine.close
        return engines[options["dtype"]]

    vllm_sampling.VllmSampler = shared_engine
    for name, run in zip(names, runs):
        # a run still going after 2 minutes has hung: its stacks go to NAME.rankR.stacks
        stacks = open(f"{out}/{name}.rank{rank}.stacks", "w")
        faulthandler.dump_traceback_later(120, file=stacks)
        try:
            cfg = load_config(None, run["method"], [f"student.path={student}", f"teacher.target={target}",
                                                    f"data.source={data}",
                                                    *(o.format(score_cache=score_cache, target=target)
                                                      for o in overrides(run))])
        except ValueError as exc:   # a refusal by the configuration itself
            outcome = {"status": "refused", "message": str(exc)}
        else:
            try:
                train(cfg, f"{out}/{name}", progress=False)
                outcome = {"status": "trained"}
            except SystemExit as exc:
                outcome = {"status": "refused", "message": str(exc)}
            except BaseException:
                outcome = {"status": "crashed", "message": traceback.format_exc()}
        faulthandler.cancel_dump_traceback_later()
        stacks.close()
        Path(f"{out}/{name}.rank{rank}.json").write_text(json.dumps(outcome))
        if not _await_peer(Path(f"{out}/{name}.rank{1 - rank}.json"), timeout=150):
            break
    for engine in engines.values():
        engine.really_close()   # shuts vLLM down, and with it the process group
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(teacher, vllm_student, data_file, tmp_path_factory):
    """{name: (outcome on rank 0, outcome on rank 1)} for every run of the design (vLLM runs
    only where vLLM is installed), each run's folder under the returned `out`."""
    out = tmp_path_factory.mktemp("combinations")
    # the records name teachers a and b in turn (read only by the runs with named teachers)
    records = [json.loads(line) for line in data_file.read_text().splitlines()]
    data_file = out / "data.jsonl"
    data_file.write_text("".join(json.dumps({**r, "teacher": "ab"[i % 2]}) + "\n" for i, r in enumerate(records)))
    score_cache = out / "score-cache"   # the data file's records, a shard of 2 for each rank
    assert score_file.main([str(data_file), str(score_cache), "--teacher", teacher.target, "--top-k", "8",
                            "--tokenizer", str(vllm_student), "--shard-sequences", "2"]) == 0
    chosen = [(name, run) for name, run in zip(NAMES, DESIGN) if HAS_VLLM or run["engine"] != "vllm"]
    started, stopped = time.monotonic(), ""
    try:
        spawn_ranks(_design_ranks, [n for n, _ in chosen], [r for _, r in chosen], str(vllm_student),
                    teacher.target, str(data_file), str(score_cache), str(out), timeout=540)
    except (Exception, pytest.fail.Exception) as exc:   # a rank hung or died: its finished runs count
        stopped = f"the ranks stopped: {exc}"
    print(f"\n{len(chosen)} combinations on 2 ranks: {time.monotonic() - started:.0f} s")
    found = {}
    for name, _ in chosen:
        found[name] = []
        for rank in (0, 1):
            done, stacks = out / f"{name}.rank{rank}.json", out / f"{name}.rank{rank}.stacks"
            hung = stacks.read_text() if stacks.exists() else ""
            found[name].append(json.loads(done.read_text()) if done.exists()
                               else {"status": "not run", "message": f"{stopped}\n{hung}"})
    return out, found


def _metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.vllm) if run["engine"] == "vllm" else name
                                  for name, run in zip(NAMES, DESIGN)])
def test_each_combination_trains_or_is_refused_at_start(name, outcomes, vllm_student):
    run = DESIGN[NAMES.index(name)]
    out, found = outcomes
    options = refused_options(run)
    for rank, outcome in enumerate(found[name]):
        assert outcome["status"] != "crashed", f"rank {rank}:\n{outcome['message']}"
        assert outcome["status"] != "not run", f"rank {rank} hung here or earlier:\n{outcome['message']}"
        if options:
            assert outcome["status"] == "refused", f"rank {rank} trained a run that {options} should refuse"
            assert any(o in outcome["message"] for o in options), (options, outcome["message"])
        else:
            assert outcome["status"] == "trained", f"rank {rank}: {outcome['message']}"
    lines = _metrics(out / name)
    if options:
        assert lines == [], "refused after a step"
        return
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(math.isfinite(x["loss"]) for x in lines), lines
    assert all(x["samples"] == 4 for x in lines)   # 2 prompts on each of 2 ranks
    sampled = [x for x in lines if x["source"] == "student"]
    if run["engine"] == "vllm":   # the sampler's log-probs reach the metric (and TIS) at every step
        assert all("sampler_staleness" in x for x in sampled), lines
        if run["precision"] == "float32":   # synced weights: the engine samples the trained model
            assert all(x["sampler_logprob_diff_max"] <= 1e-3 for x in sampled if x["sampler_staleness"] == 0)
    final = checkpoint.hf_folder(checkpoint.checkpoint_dir(out / name, 3))
    trained = AutoModelForCausalLM.from_pretrained(final).state_dict()
    start = AutoModelForCausalLM.from_pretrained(vllm_student).state_dict()
    assert any(not torch.equal(trained[k].float(), start[k]) for k in start), "no weight moved"


# --------------------------------------------------------------------------------------------
# stop and --resume through the real command, one leg per parallel mode

RESUME_LEGS = {
    "ddp": ["--preset", "gkd", "train.parallel=ddp", "student.lora.r=4",
            "student.lora.target_modules=[q_proj,v_proj]", "train.lag=1"],
    "fsdp": ["--preset", "gkd", "train.parallel=fsdp", "train.micro_batch_size=1", "train.loss_chunk_size=3"],
}


def _torchrun(student, target, data, out, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "student_worker", "--output-dir", str(out), "--log-format", "json",
           f"student.path={student}", f"teacher.target={target}", f"data.source={data}", *COMMON, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("parallel", RESUME_LEGS)
def test_stop_then_resume_under_torchrun(parallel, teacher, vllm_student, data_file, tmp_path):
    leg = RESUME_LEGS[parallel]
    stopped = _torchrun(vllm_student, teacher.target, data_file, tmp_path, *leg, "train.stop_after=2")
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    first = _metrics(tmp_path)
    assert [x["step"] for x in first] == [1, 2]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000002"
    resumed = _torchrun(vllm_student, teacher.target, data_file, tmp_path, *leg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    lines = _metrics(tmp_path)
    # the first leg's lines kept as they were (a fresh start would have rewritten them), one added
    assert lines[:2] == first and [x["step"] for x in lines] == [1, 2, 3], lines
    assert all(math.isfinite(x["loss"]) for x in lines)
    AutoModelForCausalLM.from_pretrained(checkpoint.hf_folder(checkpoint.checkpoint_dir(tmp_path, 3)))

"""Least-work routing against round robin over two teacher replicas, one of them busy (issue 29).

    .venv/bin/python -m bench.routing                 # 3 rounds, about 4 minutes on 2 CPU cores
    .venv/bin/python -m bench.routing --rounds 5 --out routing.json

Two replicas of the demo teacher on 127.0.0.1, one torch thread each. Replica B is also serving
another team's job, as a shared teacher does: a separate process keeps two Score calls of 256
sequences in flight there, all the time. A serves only us. Then, for each routing in turn
(round_robin, least_work, alternating, `--rounds` times, the same load throughout):

- calls: 4 threads of one client, each sending Score calls of 32 sequences x 24 tokens (top 15)
  over both replicas; the latency of every call: p50, p99, mean;
- the job: the student worker (kd on digsum, the demo student, batch 128, 30 steps, lag 0)
  against both replicas; its mean step time (elapsed time per step from metrics.jsonl, the first
  5 steps left out as warm-up) and the Score latency it saw.

Prints each measure per routing (median over rounds, min-max) and least_work / round_robin.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from distill.client.teacher_client import TeacherClient
from student_worker.config import load_config
from student_worker.train.trainer import train
from teacher_server.process import TeacherProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEACHER, STUDENT = ROOT / "examples" / "demo-teacher", ROOT / "examples" / "demo-student"
ROUTINGS = ("round_robin", "least_work")
SEQUENCE = list(range(3, 13)) * 2 + [3, 4, 5, 6]   # 24 digit tokens


def other_tenant(target: str, stop, busy, sequences: int = 256, threads: int = 2) -> None:
    """Another team's job on replica B: `threads` callers sending Score calls of `sequences`
    sequences back to back, so that B always has a queue (`busy` set once the first is answered)."""
    torch.set_num_threads(1)
    with TeacherClient(target, timeout=600) as client:
        def caller() -> None:
            while not stop.is_set():
                client.score([SEQUENCE] * sequences, 1, top_k=15)
                busy.set()

        with ThreadPoolExecutor(threads) as pool:
            for _ in range(threads):
                pool.submit(caller)


def calls(target: str, routing: str, n: int = 160, threads: int = 4) -> dict:
    with TeacherClient(target, routing=routing, timeout=600) as client:
        def one(_) -> float:
            started = time.monotonic()
            client.score([SEQUENCE] * 32, 1, top_k=15)
            return time.monotonic() - started

        with ThreadPoolExecutor(threads) as pool:
            latencies = sorted(pool.map(one, range(n)))
    return {"p50_s": latencies[n // 2], "p99_s": latencies[int(0.99 * n) - 1], "mean_s": statistics.mean(latencies)}


def job(target: str, routing: str, out: pathlib.Path, steps: int = 30, warmup: int = 5) -> dict:
    cfg = load_config(None, "kd", [
        f"teacher.target={target}", f"teacher.routing={routing}", "teacher.top_k=15", "data.source=digsum",
        "data.batch_size=128", "sampling.max_new_tokens=10", f"student.path={STUDENT}", "student.num_threads=1",
        f"train.steps={steps}", f"train.eval_every={steps}", "train.eval_prompts=8", "train.lag=0",
        "train.eval_acceptance_prompts=0"])
    train(cfg, out, progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in lines if "elapsed_s" in x]
    step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows[warmup:], rows[warmup + 1:])]
    return {"step_s": statistics.mean(step_s),
            "score_latency_s": statistics.mean(x["teacher_latency_s"] for x in rows[warmup:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fast, busy = (TeacherProcess(TEACHER, "--num-threads", "1", "--max-wait-ms", "1") for _ in range(2))
    spawn = multiprocessing.get_context("spawn")
    stop, busy_now = spawn.Event(), spawn.Event()
    load = None
    results = {r: [] for r in ROUTINGS}
    try:
        fast.wait_serving(), busy.wait_serving()
        load = spawn.Process(target=other_tenant, args=(busy.target, stop, busy_now))
        load.start()
        if not busy_now.wait(300):
            raise SystemExit("the other tenant's load never reached replica B")
        target = f"{fast.target},{busy.target}"
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                for routing in ROUTINGS:
                    r = {**calls(target, routing), **job(target, routing, pathlib.Path(tmp) / f"{routing}-{round_}")}
                    results[routing].append(r)
                    print(f"round {round_} {routing}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    finally:
        stop.set()
        if load is not None:
            load.join(60)
        fast.terminate(), busy.terminate()
    print(f"\ntwo replicas, one busy with another tenant's job; median over {args.rounds} rounds [min, max]\n")
    print("| measure | round_robin | least_work | least_work / round_robin |")
    print("| --- | --- | --- | --- |")
    summary = {}
    for key in results[ROUTINGS[0]][0]:
        cells, medians = [], {}
        for routing in ROUTINGS:
            values = [r[key] for r in results[routing]]
            medians[routing] = statistics.median(values)
            cells.append(f"{medians[routing]:.3f} [{min(values):.3f}, {max(values):.3f}]")
        ratio = medians["least_work"] / medians["round_robin"]
        summary[key] = {**medians, "ratio": ratio}
        print(f"| {key} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"rounds": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()

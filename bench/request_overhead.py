"""What one sequence of a Score request costs beyond its forward pass, per wire form.

    python -m bench.request_overhead [--runs 7] [--sizes 128,1024] [--seq-len 16]

On a random model whose forward pass is negligible (1 layer, width 16, vocabulary 128), Score of B
sequences of --seq-len tokens (k = 20) over gRPC on 127.0.0.1, minus the same forward pass and
top-k in this process, divided by B: the server's and the client's work per sequence (validation,
packing, queueing, result messages). Measured for the per-sequence form (one ScoreSequence and
one ScoreResult message per sequence, what older clients send, answered as a list) and the
packed form (one array per field for the whole request, what TeacherClient sends, answered whole
as `TeacherClient.score_packed` and the trainer take it), interleaved, medians of --runs.
Target: packed <= 20 us per sequence.

Two measures: wall time, and CPU time (this process's plus the server process's, from
/proc/PID/stat, minus the in-process side's), which a machine shared with other work inflates
far less than wall time.
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.teacher_client import (TeacherClient, score_request, scores_from_response,
                                           whole_scores_from_response)
from teacher_server.backends.hf import TransformersBackend
from teacher_server.process import TeacherProcess
from teacher_server.scoring import ScoreItem
from teacher_server.server import keep_freed_memory

TOP_K = 20
VOCAB = 128   # the tiny tokenizer's ~104 characters and fillers: top-k and softmax stay cheap


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, pid: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and, when given, process `pid`)."""
    cpu, other, start = time.process_time(), pid and server_cpu_s(pid), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return wall, time.process_time() - cpu + ((server_cpu_s(pid) - other) if pid else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="128,1024", help="sequences per request")
    parser.add_argument("--seq-len", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()   # the server's allocator setting, so both sides allocate alike
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(pathlib.Path(tmp) / "tiny", preset="tiny", hidden_size=16,
                                    intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=1, num_key_value_heads=1,
                                    vocab_size=VOCAB)
        backend = TransformersBackend(AutoModelForCausalLM.from_pretrained(model_dir),
                                      AutoTokenizer.from_pretrained(model_dir), str(model_dir))
        # one forward pass per request, and no waiting for batch-mates that will not come
        server = TeacherProcess(model_dir, "--max-batch-tokens", str(max(sizes) * args.seq_len),
                                "--max-wait-ms", "0", "--max-queued-tokens", str(1 << 24))
        try:
            server.wait_serving()
            with TeacherClient(server.target) as client:
                rows = [measure(client, server.proc.pid, backend, n, args.seq_len, args.runs)
                        for n in sizes]
        finally:
            server.terminate()
    print(f"1-layer model (width 16, vocabulary {VOCAB}), {args.seq_len} tokens per sequence, k={TOP_K}, "
          f"1 torch thread each side; wall: medians of {args.runs} runs; CPU: means\n")
    print("| sequences | measure | in process | per-sequence form | packed form | overhead / seq: "
          "per-sequence | packed | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for n, measures in rows:
        for what, (local, per_seq, packed) in measures.items():
            over_seq, over_packed = (per_seq - local) / n * 1e6, (packed - local) / n * 1e6
            print(f"| {n} | {what} | {local * 1e3:.1f} ms | {per_seq * 1e3:.1f} ms | "
                  f"{packed * 1e3:.1f} ms | {over_seq:.1f} us | {over_packed:.1f} us | "
                  f"{over_seq / max(over_packed, 1e-3):.1f}x |")
    if len(rows) > 1:   # the packed overhead as a line: fixed per request + a slope per sequence
        (n0, first), (n1, last) = rows[0], rows[-1]
        for what in first:
            over0, over1 = (first[what][2] - first[what][0]), (last[what][2] - last[what][0])
            slope = (over1 - over0) / (n1 - n0)
            print(f"\npacked, {what}: {(over0 - slope * n0) * 1e3:.2f} ms per request + "
                  f"{slope * 1e6:.1f} us per sequence (from {n0} and {n1} sequences)")


def measure(client: TeacherClient, pid: int, backend, n: int, seq_len: int, runs: int):
    g = torch.Generator().manual_seed(n)
    seqs = torch.randint(4, VOCAB, (n, seq_len), generator=g)
    items = [ScoreItem.pack(seqs, 1, TOP_K)]

    def over_grpc(packed: bool):
        request = score_request(seqs, 1, TOP_K, 1.0, None, "float32", packed=packed)
        response = client.stub.Score(request, timeout=60)
        return whole_scores_from_response(response) if packed else scores_from_response(response)

    forms = {"local": (lambda: backend.score(items), None),
             "per_seq": (lambda: over_grpc(False), pid), "packed": (lambda: over_grpc(True), pid)}
    per_seq, packed = over_grpc(False), over_grpc(True)
    assert torch.equal(torch.cat([s.topk_logprobs for s in per_seq]), packed.topk_logprobs)
    for fn, _ in forms.values():
        fn()  # warm
    gc.freeze()   # as the server does after its warm-up: the in-process side runs as the server's does
    walls, cpus = {name: [] for name in forms}, {name: [] for name in forms}
    for _ in range(runs):
        for name, (fn, proc) in forms.items():
            # an untimed call first: the per-sequence form's garbage (thousands of small objects
            # on both sides) would otherwise be collected during the next form's timed call
            fn()
            wall, cpu = timed(fn, proc)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return n, {"wall": [statistics.median(walls[name]) for name in forms],
               "CPU": [statistics.mean(cpus[name]) for name in forms]}


if __name__ == "__main__":
    main()

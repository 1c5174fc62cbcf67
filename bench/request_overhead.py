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

A third form measures the floor under both: a bare grpc.aio server (same machine, same client
channel options) whose one method runs the same forward pass on a thread, as the teacher does,
and answers with the real answer's bytes, prepared in advance. What it costs beyond the in-process
pass is what any gRPC server that runs its model off the event loop pays around that pass here
(the call, the bytes, the hand-offs to and from the thread, and waking each waiting thread); the
packed form beyond the floor is ours (checks, queueing, packing the answer, decoding it).

Two measures: wall time, and CPU time (this process's plus the server process's, from
/proc/PID/stat, minus the in-process side's), which a machine shared with other work inflates
far less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import itertools
import multiprocessing
import os
import pathlib
import statistics
import tempfile
import time

import grpc
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.client.teacher_client import (TeacherClient, channel_options, score_request,
                                           scores_from_response, whole_scores_from_response)
from scripts.tiny_model import make_tiny_model
from teacher_server import protocol
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


def load_backend(model_dir) -> TransformersBackend:
    return TransformersBackend(AutoModelForCausalLM.from_pretrained(model_dir),
                               AutoTokenizer.from_pretrained(model_dir), str(model_dir))


def sequences(n: int, seq_len: int) -> torch.Tensor:
    return torch.randint(4, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(n))


def request_for(n: int, seq_len: int):
    """The packed Score request of n sequences, as the client sends it."""
    return score_request(sequences(n, seq_len), 1, TOP_K, 1.0, None, "float32", packed=True)


def serve_floor(model_dir, sizes: list[int], seq_len: int, port_pipe) -> None:
    """The floor server (see the module's doc): method /floor/S{n} runs the forward pass of the n
    sequences on a thread, then answers with the packed answer's bytes."""
    torch.set_num_threads(1)
    keep_freed_memory()
    backend = load_backend(model_dir)
    limits = protocol.limits_for(backend.info)
    work = {}
    for n in sizes:   # the teacher's own checks and answer, once, ahead of the calls
        parsed = protocol.parse_score_request(request_for(n, seq_len), limits)
        work[n] = (parsed.items, parsed.respond(backend.score(parsed.items)).SerializeToString())
    forward = concurrent.futures.ThreadPoolExecutor(1)

    def method(n: int):
        items, answer = work[n]

        async def handle(request: bytes, context) -> bytes:
            await asyncio.get_running_loop().run_in_executor(forward, backend.score, items)
            return answer
        return grpc.unary_unary_rpc_method_handler(handle)

    async def run():
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 1 << 30),
                                          ("grpc.max_receive_message_length", 1 << 30)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "floor", {f"S{n}": method(n) for n in sizes}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_pipe.send(port)
        await server.wait_for_termination()

    asyncio.run(run())


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
        backend = load_backend(model_dir)
        # one forward pass per request, and no waiting for batch-mates that will not come
        server = TeacherProcess(model_dir, "--max-batch-tokens", str(max(sizes) * args.seq_len),
                                "--max-wait-ms", "0", "--max-queued-tokens", str(1 << 24))
        spawn = multiprocessing.get_context("spawn")   # no fork of a process holding gRPC and torch
        port_in, port_out = spawn.Pipe(duplex=False)
        floor = spawn.Process(target=serve_floor, args=(model_dir, sizes, args.seq_len, port_out),
                              daemon=True)
        floor.start()
        try:
            server.wait_serving()
            if not port_in.poll(120):
                raise RuntimeError("the floor server did not start within 120 s")
            floor_target = f"127.0.0.1:{port_in.recv()}"
            with TeacherClient(server.target) as client, grpc.insecure_channel(
                    floor_target, options=channel_options(1 << 30, 1)) as floor_channel:
                rows = [measure(client, server.proc.pid, floor_channel, floor.pid, backend, n,
                                args.seq_len, args.runs) for n in sizes]
        finally:
            server.terminate()
            floor.kill()
    print(f"1-layer model (width 16, vocabulary {VOCAB}), {args.seq_len} tokens per sequence, k={TOP_K}, "
          f"1 torch thread each side; wall: medians of {args.runs} runs; CPU: means\n")
    print("| sequences | measure | in process | gRPC floor | per-sequence form | packed form | "
          "overhead / seq: floor | per-sequence | packed | packed beyond the floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, measures in rows:
        for what, (local, bare, per_seq, packed) in measures.items():
            over = lambda t: f"{(t - local) / n * 1e6:.1f} us"
            print(f"| {n} | {what} | {local * 1e3:.1f} ms | {bare * 1e3:.1f} ms | "
                  f"{per_seq * 1e3:.1f} ms | {packed * 1e3:.1f} ms | {over(bare)} | {over(per_seq)} | "
                  f"{over(packed)} | {(packed - bare) / n * 1e6:.1f} us |")
    if len(rows) > 1:   # overheads as lines: fixed per request + a slope per sequence
        (n0, first), (n1, last) = rows[0], rows[-1]
        print()
        for what, (form, column) in itertools.product(first, (("floor", 1), ("packed", 3))):
            over0, over1 = (first[what][column] - first[what][0]), (last[what][column] - last[what][0])
            slope = (over1 - over0) / (n1 - n0)
            print(f"{form}, {what}: {(over0 - slope * n0) * 1e3:.2f} ms per request + "
                  f"{slope * 1e6:.1f} us per sequence (from {n0} and {n1} sequences)")


def measure(client: TeacherClient, pid: int, floor_channel: grpc.Channel, floor_pid: int, backend,
            n: int, seq_len: int, runs: int):
    seqs = sequences(n, seq_len)
    items = [ScoreItem.pack(seqs, 1, TOP_K)]
    floor_call = floor_channel.unary_unary(f"/floor/S{n}")
    floor_request = request_for(n, seq_len).SerializeToString()

    def over_grpc(packed: bool):
        request = score_request(seqs, 1, TOP_K, 1.0, None, "float32", packed=packed)
        response = client.stub.Score(request, timeout=60)
        return whole_scores_from_response(response) if packed else scores_from_response(response)

    forms = {"local": (lambda: backend.score(items), None),
             "floor": (lambda: floor_call(floor_request, timeout=60), floor_pid),
             "per_seq": (lambda: over_grpc(False), pid), "packed": (lambda: over_grpc(True), pid)}
    per_seq, packed = over_grpc(False), over_grpc(True)
    assert torch.equal(torch.cat([s.topk_logprobs for s in per_seq]), packed.topk_logprobs)
    assert floor_call(floor_request) == client.stub.Score(request_for(n, seq_len)).SerializeToString()
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

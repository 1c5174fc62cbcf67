"""What serving Score over gRPC costs, measured side by side in one run.

    python -m bench.score_overhead [--runs 5] [--threads 1] [--device cuda] [--model smollm2|DIR]

Prints three ratios (medians of --runs repetitions, interleaved so both sides see the same machine):
1. Score over gRPC on 127.0.0.1 / the same forward + top-k in process   (target <= 1.10)
   A ~20M-parameter random Llama (vocabulary 32k; or --model), 8 sequences x 512 tokens, k = 64.
2. packed Tensor encode+decode / one protobuf value per number           (target >= 10x faster)
   The [4096, 64] ids and log-probs of that Score answer, serialized and parsed back to tensors.
3. 8 concurrent clients, one sequence each: throughput batching on / off (target >= 1.5)
   On a small CPU this ratio stays near 1: one sequence already keeps the cores busy (the LM
   head and the softmax over 32k logits are compute- and memory-bound), so merging passes saves
   only per-pass overhead. On a GPU one short sequence leaves the device mostly idle; run it
   there with --device cuda.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.tensors import pack, unpack_torch
from distill.v1 import teacher_pb2 as pb
from bench.models import add_model_argument, bench_model, describe, random_sequences
from distill.client.teacher_client import TeacherClient
from teacher_server.backends.hf import TransformersBackend
from teacher_server.process import TeacherProcess
from teacher_server.scoring import ScoreItem

TOP_K, SEQS, SEQ_LEN = 64, 8, 512


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_value_message_class():
    """A naive contract: `repeated int32` / `repeated float` fields, one value per number."""
    file = descriptor_pb2.FileDescriptorProto(name="bench_per_value.proto", package="bench", syntax="proto3")
    msg = file.message_type.add(name="PerValue")
    for number, (name, kind) in enumerate([("ids", "TYPE_INT32"), ("logprobs", "TYPE_FLOAT")], 1):
        msg.field.add(name=name, number=number, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                      type=getattr(descriptor_pb2.FieldDescriptorProto, kind))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.PerValue"))


def bench_encoding(runs: int) -> tuple[float, float]:
    ids = torch.randint(0, 32000, (SEQS * SEQ_LEN, TOP_K), dtype=torch.int32)
    logprobs = torch.randn(SEQS * SEQ_LEN, TOP_K)
    PerValue = per_value_message_class()

    def packed():
        wire = pb.ScoreResult(topk_ids=pack(ids), topk_logprobs=pack(logprobs)).SerializeToString()
        back = pb.ScoreResult.FromString(wire)
        return unpack_torch(back.topk_ids), unpack_torch(back.topk_logprobs)

    def per_value():
        msg = PerValue()
        msg.ids.extend(ids.flatten().tolist())
        msg.logprobs.extend(logprobs.flatten().tolist())
        back = PerValue.FromString(msg.SerializeToString())
        return (torch.tensor(back.ids, dtype=torch.int32).view(ids.shape),
                torch.tensor(back.logprobs).view(logprobs.shape))

    assert all(torch.equal(a, b) for a, b in zip(packed(), per_value()))
    t_packed, t_value = [], []
    for _ in range(runs):
        t_packed.append(timed(packed))
        t_value.append(timed(per_value))
    return statistics.median(t_packed), statistics.median(t_value)


def bench_grpc_vs_in_process(model_dir, runs: int, device: str) -> tuple[float, float]:
    seqs = random_sequences(model_dir, SEQS, SEQ_LEN, seed=0)
    backend = TransformersBackend(AutoModelForCausalLM.from_pretrained(model_dir).to(device),
                                  AutoTokenizer.from_pretrained(model_dir), str(model_dir))
    items = [ScoreItem.pack(seqs, 1, TOP_K)]
    server = TeacherProcess(model_dir, "--max-batch-tokens", str(SEQS * SEQ_LEN), "--device", device,
                            "--dtype", "float32")
    try:
        server.wait_serving()
        with TeacherClient(server.target) as client:
            over_grpc = lambda: client.score(seqs, 1, top_k=TOP_K)
            in_process = lambda: backend.score(items)
            over_grpc(), in_process()  # warm both
            t_grpc, t_local = [], []
            for _ in range(runs):
                t_grpc.append(timed(over_grpc))
                t_local.append(timed(in_process))
    finally:
        server.terminate()
    return statistics.median(t_grpc), statistics.median(t_local)


def bench_concurrency(model_dir, runs: int, seq_len: int, device: str) -> tuple[float, float]:
    seqs = random_sequences(model_dir, SEQS, seq_len, seed=1)

    def throughput(server) -> float:
        clients = [TeacherClient(server.target) for _ in seqs]
        for c in clients:
            c.info()  # connect before timing

        def round_trip():
            threads = [threading.Thread(target=c.score, args=([s], 1), kwargs={"top_k": TOP_K})
                       for c, s in zip(clients, seqs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        round_trip()
        seconds = statistics.median(timed(round_trip) for _ in range(runs))
        for c in clients:
            c.close()
        return len(seqs) / seconds

    on = TeacherProcess(model_dir, "--max-wait-ms", "10", "--device", device)
    # a budget of 1 token: every forward pass holds exactly one sequence
    off = TeacherProcess(model_dir, "--max-batch-tokens", "1", "--device", device)
    try:
        on.wait_serving()
        off.wait_serving()
        return throughput(on), throughput(off)
    finally:
        on.terminate()
        off.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--device", default="cpu", help="device of the servers and the in-process side")
    parser.add_argument("--concurrent-len", type=int, default=128,
                        help="tokens per sequence in the concurrency test")
    add_model_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bench_model(args.model, tmp)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model: {describe(model_dir)}, {params / 1e6:.1f}M parameters; torch threads: "
              f"{args.threads} here, 1 in each server; medians of {args.runs} runs\n")
        t_grpc, t_local = bench_grpc_vs_in_process(model_dir, args.runs, args.device)
        t_packed, t_value = bench_encoding(args.runs)
        on, off = bench_concurrency(model_dir, args.runs, args.concurrent_len, args.device)

    rows = [
        (f"Score over gRPC / in process ({SEQS}x{SEQ_LEN}, k={TOP_K})",
         f"{t_grpc:.3f} s / {t_local:.3f} s", t_grpc / t_local, "<= 1.10", t_grpc / t_local <= 1.10),
        (f"per-value / packed encode+decode ([{SEQS * SEQ_LEN}, {TOP_K}] x2)",
         f"{t_value * 1e3:.1f} ms / {t_packed * 1e3:.2f} ms", t_value / t_packed, ">= 10", t_value / t_packed >= 10),
        (f"8 clients x 1 seq ({args.concurrent_len} tok): batching on / off",
         f"{on:.1f} / {off:.1f} seq/s", on / off, ">= 1.5", on / off >= 1.5),
    ]
    print(f"| {'measure':<52} | {'times':<26} | {'ratio':>7} | {'target':<7} | ok  |")
    print(f"|{'-' * 54}|{'-' * 28}|{'-' * 9}|{'-' * 9}|-----|")
    for name, times, ratio, target, ok in rows:
        print(f"| {name:<52} | {times:<26} | {ratio:>7.2f} | {target:<7} | {'yes' if ok else 'NO ':<3} |")


if __name__ == "__main__":
    main()

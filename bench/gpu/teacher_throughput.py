"""Teacher throughput on a GPU: an 8B-parameter Llama-shaped model (random weights, bfloat16)
served by the transformers backend, scored by several concurrent gRPC clients.

    python -m bench.gpu.teacher_throughput                      # GPU: 8B, bf16, 4 clients
    python -m bench.gpu.teacher_throughput --preset tiny --seconds 3   # CPU smoke run (tests)

(vLLM cannot be carried to the GPU machine, so this measures the transformers backend.)
Steps: measure the device's matrix-multiply rate (the ceiling, bf16 on GPU, float32 on CPU);
build the model on the device; serve it in this process (the real TeacherServer on 127.0.0.1);
start --clients client processes that each send Score requests of --batch-tokens tokens
(k = --top-k) for --seconds; print scored tokens/s, the fraction of the ceiling that
2 x parameters FLOPs per token reaches, and the peak device memory. Goal on a GPU: >= 60%.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time

import torch

# Llama 3 8B's shape: 8.0B parameters
PRESETS = {
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192),
}


def matmul_rate(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matrix multiply, best of `repeats` (the device's dense ceiling)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):            # the first one warms up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()        # note: waits for the kernel; the clock is honest
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def build_model(preset: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from scripts.tiny_model import PRESETS as TINY, char_tokenizer

    tokenizer = char_tokenizer()
    config = LlamaConfig(**(PRESETS.get(preset) or TINY[preset]), tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):              # random init on the device: no 32 GB CPU copy
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), tokenizer


def serve_in_thread(model, tokenizer, batch_tokens: int):
    """The real TeacherServer on 127.0.0.1 (free port), on its own event loop thread."""
    from teacher_server.backends.hf import TransformersBackend
    from teacher_server.config import ServerSettings
    from teacher_server.server import TeacherServer

    settings = ServerSettings(model="bench-random", port=0, http_port=0, max_batch_tokens=batch_tokens,
                              max_message_mb=1024)
    server = TeacherServer(settings, TransformersBackend(model, tokenizer, "bench-random",
                                                         settings.logits_chunk_tokens))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    return server, loop


def client(target: str, vocab: int, seq_len: int, seqs: int, top_k: int, go, seconds: float,
           seed: int, results) -> None:
    """Once `go` is set, send Score requests of seqs x seq_len tokens for `seconds`; report
    (tokens scored, seconds taken)."""
    from distill.client.teacher_client import TeacherClient

    g = torch.Generator().manual_seed(seed)
    batch = [torch.randint(0, vocab, (seq_len,), generator=g) for _ in range(seqs)]
    scored = 0
    with TeacherClient(target, timeout=600) as c:
        c.score(batch[:1], 1, top_k=top_k)           # connect and warm up
        results.put(None)
        go.wait()
        start = time.perf_counter()
        while time.perf_counter() < start + seconds:
            c.score(batch, 1, top_k=top_k)
            scored += seqs * (seq_len - 1)
        results.put((scored, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="8b", help="8b, or a scripts/tiny_model.py preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per request")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if gpu else torch.float32
    if not gpu:
        torch.set_num_threads(1)
    ceiling = matmul_rate(args.device, dtype, 8192 if gpu else 512)
    model, tokenizer = build_model(args.preset, args.device, dtype)
    params = sum(p.numel() for p in model.parameters())
    seq_len = min(args.seq_len, args.batch_tokens, model.config.max_position_embeddings)
    seqs = max(1, args.batch_tokens // seq_len)
    # the server's budget holds every client's request at once: concurrent requests share passes
    server, loop = serve_in_thread(model, tokenizer, seqs * seq_len * args.clients)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    ctx = multiprocessing.get_context("spawn")      # clients: separate processes, no shared GIL
    results, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=client, args=(f"127.0.0.1:{server.grpc_port}",
                                              model.config.vocab_size, seq_len, seqs, args.top_k,
                                              go, args.seconds, i, results))
             for i in range(args.clients)]
    for p in procs:
        p.start()
    for _ in procs:                                  # every client connected and warmed up
        assert results.get(timeout=600) is None
    go.set()
    done = [results.get(timeout=args.seconds + 900) for _ in procs]
    for p in procs:
        p.join()
    asyncio.run_coroutine_threadsafe(server.stop(grace=5), loop).result()
    tokens = sum(n for n, _ in done)
    rate = tokens / max(s for _, s in done)
    fraction = rate * 2 * params / ceiling
    peak = (f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if gpu else "n/a (CPU)")
    print(f"model: Llama-shaped, {params / 1e9:.2f}B parameters, {str(dtype).removeprefix('torch.')}"
          f", on {args.device}; {args.clients} clients x {seqs} x {seq_len} tokens, k = {args.top_k}")
    print(f"matmul ceiling: {ceiling / 1e12:.2f} TFLOP/s")
    print(f"scored tokens/s: {rate:,.0f}")
    print(f"fraction of the ceiling (2 x params FLOPs per token): {fraction:.1%} (goal >= 60% on a GPU)")
    print(f"peak device memory: {peak}")


if __name__ == "__main__":
    main()

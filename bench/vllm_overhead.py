"""What serving Score on the vllm backend costs, measured side by side in one run.

    python -m bench.vllm_overhead [--runs 5] [--top-k 20,64] [--model smollm2|DIR]

Needs vLLM (`make setup` installs the CPU build on Linux x86_64). A random-weight Llama (or --model; the
`bench` preset of scripts/tiny_model.py: hidden 256, 4 layers, vocabulary 32,000, float32),
8 sequences x 512 tokens, at each k. Every timing is the median of --runs repetitions,
interleaved so that every side sees the same machine. Printed per k:

1. our Score over gRPC (vllm backend) / the same engine and conversion in this process
   (target <= 1.10): what gRPC, packing and the batcher add.
2. throughput: ours / vLLM's own OpenAI server (`/v1/completions` with `prompt_logprobs`, its
   JSON parsed into the same arrays), both engines set up alike
   (targets: >= 1.2 at k = 20, >= 2 at k = 64).
3. the share of the in-process time spent turning vLLM's output into arrays (ours:
   prompt_rows and the tail; vLLM's: its LogprobsProcessor making Python lists of its tensors,
   which flat_logprobs cannot avoid), and the transformers backend's throughput on the same
   batch for comparison.
Every engine runs in its server's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), with 1 GiB of KV
cache and one OpenMP thread, as in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ENV = dict(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
os.environ.update(ENV)          # before vLLM is imported: the in-process engine is set up alike

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from bench.timing import median_time  # noqa: E402
from bench.models import add_model_argument, bench_model, describe, random_sequences  # noqa: E402
from distill.client.teacher_client import TeacherClient  # noqa: E402
from teacher_server.backends import vllm_backend  # noqa: E402
from teacher_server.backends.hf import TransformersBackend  # noqa: E402
from teacher_server.process import TeacherProcess  # noqa: E402
from teacher_server.scoring import ScoreItem  # noqa: E402

SEQS, SEQ_LEN, MAX_TOP_K = 8, 512, 64
TARGETS = {20: 1.2, 64: 2.0}


class Clock:
    """Adds up the time spent in the functions it wraps (in this process)."""

    def __init__(self, owner, *names):
        self.seconds = 0.0
        for name in names:
            setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper


class OpenAIServer:
    """vLLM's own server (`python -m vllm.entrypoints.openai.api_server`; the `vllm` console
    script fails under the vllm-cpu package name) on a free port."""

    def __init__(self, model_dir, cache_dir):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
             "--max-logprobs", str(MAX_TOP_K), "--enforce-eager", "--seed", "0"],
            env={**os.environ, "VLLM_CACHE_ROOT": str(cache_dir)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(1)
        self.close()
        raise RuntimeError("vLLM's OpenAI server did not start")

    def score(self, model_dir, seqs, k: int):
        """prompt_logprobs over HTTP, parsed into the arrays our Score returns (top-k ids and
        log-probs sorted by rank, the actual token's log-prob), positions 1 .. T-1."""
        body = json.dumps(dict(model=str(model_dir), prompt=[s.tolist() for s in seqs],
                               max_tokens=1, temperature=0, prompt_logprobs=k)).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            choices = json.loads(reply.read())["choices"]
        arrays = []
        for seq, choice in zip(seqs, choices):
            ids, logprobs, actual = [], [], []
            for token, position in zip(seq[1:].tolist(), choice["prompt_logprobs"][1:]):
                ranked = sorted(((v["rank"], int(t), v["logprob"]) for t, v in position.items()
                                 if v["rank"] <= k))[:k]
                ids.append([t for _, t, _ in ranked])
                logprobs.append([lp for _, _, lp in ranked])
                actual.append(position[str(token)]["logprob"])
            arrays.append((np.array(ids, np.int32), np.array(logprobs, np.float32),
                           np.array(actual, np.float32)))
        return arrays

    def close(self):
        self.proc.terminate()
        self.proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (medians; 3 was noisy here)")
    parser.add_argument("--top-k", default="20,64", help="comma-separated k values (<= 64)")
    add_model_argument(parser)
    args = parser.parse_args()
    ks = [int(k) for k in args.top_k.split(",")]
    torch.set_num_threads(1)
    from vllm import LLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        model_dir = bench_model(args.model, tmp)
        seqs = random_sequences(model_dir, SEQS, SEQ_LEN, seed=0)
        positions = SEQS * (SEQ_LEN - 1)
        hf = TransformersBackend(AutoModelForCausalLM.from_pretrained(model_dir),
                                 AutoTokenizer.from_pretrained(model_dir), str(model_dir))
        os.environ["VLLM_CACHE_ROOT"] = str(tmp / "cache-local")
        local = vllm_backend.VllmBackend(
            LLM(model=str(model_dir), dtype="float32", seed=0, max_logprobs=MAX_TOP_K,
                enforce_eager=True),
            AutoTokenizer.from_pretrained(model_dir), str(model_dir), MAX_TOP_K)
        from vllm.v1.engine.logprobs import LogprobsProcessor

        ours_clock = Clock(vllm_backend, "prompt_rows", "tail_from_topk")
        # vLLM's own step from its tensors to the flat Python lists, before ours
        vllm_clock = Clock(LogprobsProcessor, "_update_prompt_logprobs")
        server = TeacherProcess(model_dir, "--backend", "vllm", "--dtype", "float32",
                                "--max-top-k", str(MAX_TOP_K), "--vllm-enforce-eager",
                                "--max-batch-tokens", str(SEQS * SEQ_LEN),
                                env=dict(ENV, VLLM_CACHE_ROOT=str(tmp / "cache-server")),
                                start_timeout=300)   # an engine start on a loaded machine
        openai = OpenAIServer(model_dir, tmp / "cache-openai")
        try:
            server.wait_serving(timeout=300)
            print(f"model: {describe(model_dir)}, {sum(p.numel() for p in hf.model.parameters()) / 1e6:.1f}M "
                  f"parameters, float32; {SEQS} x {SEQ_LEN} tokens "
                  f"({positions} scored positions); medians of {args.runs} runs\n")
            rows = []
            with TeacherClient(server.target, timeout=600) as client:
                for k in ks:
                    items = [ScoreItem.pack(seqs, 1, k)]
                    sides = dict(
                        ours=lambda: client.score(seqs, 1, top_k=k),
                        local=lambda: local.score(items),
                        openai=lambda: openai.score(model_dir, seqs, k),
                        hf=lambda: hf.score(items))
                    # same answers from ours and the OpenAI server
                    ours, theirs = sides["ours"](), sides["openai"]()
                    for o, (ids, logprobs, actual) in zip(ours, theirs):
                        assert np.allclose(o.topk_logprobs.numpy(), logprobs, atol=1e-4)
                        assert np.allclose(o.token_logprobs.numpy(), actual, atol=1e-4)
                    sides["local"]()                # warm
                    ours_clock.seconds = vllm_clock.seconds = 0.0
                    t = {name: [] for name in sides}
                    for _ in range(args.runs):       # interleaved
                        for name, fn in sides.items():
                            t[name].append(median_time(fn, 1))
                    share = (ours_clock.seconds / sum(t["local"]),
                             vllm_clock.seconds / sum(t["local"]))
                    t = {name: statistics.median(v) for name, v in t.items()}
                    rows.append((k, t, share))
        finally:
            server.terminate()
            openai.close()

    print("| k | ours over gRPC | in process | ratio (<= 1.10) | vLLM OpenAI server | ours / "
          "OpenAI (target) | our conversion share | vLLM's tensors -> lists share | "
          "transformers backend |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, t, share in rows:
        rate = {name: positions / seconds for name, seconds in t.items()}
        ratio, speedup = t["ours"] / t["local"], rate["ours"] / rate["openai"]
        target = TARGETS.get(k, 1.0)
        print(f"| {k} | {rate['ours']:,.0f} pos/s | {rate['local']:,.0f} pos/s | {ratio:.2f} "
              f"{'ok' if ratio <= 1.10 else 'NO'} | {rate['openai']:,.0f} pos/s | {speedup:.2f}x "
              f"(>= {target}) {'ok' if speedup >= target else 'NO'} | {share[0]:.1%} | {share[1]:.1%} | "
              f"{rate['hf']:,.0f} pos/s |")


if __name__ == "__main__":
    main()

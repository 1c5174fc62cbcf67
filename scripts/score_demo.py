"""Interim demo: start a real teacher server on a small local model and score a batch through it.

    make demo        (or: python scripts/score_demo.py --out demo-output)

Steps: write a small random-weight Llama + tokenizer to OUT/teacher-model, start
`python -m teacher_server` on 127.0.0.1, wait for gRPC health SERVING, ask Info, score a batch of
sequences with TeacherClient, print what came back and how fast, and stop the server with SIGTERM.
(The full distillation demo replaces this once the student worker lands.)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scripts.tiny_model import make_tiny_model  # noqa: E402
from student_worker.teacher_client import TeacherClient  # noqa: E402
from teacher_server.process import TeacherProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("OUT", "demo-output")))
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = make_tiny_model(args.out / "teacher-model", preset="bench", seed=0)
    print(f"teacher model: {model_dir}")
    server = TeacherProcess(model_dir)
    try:
        server.wait_serving()
        with TeacherClient(server.target) as client:
            info = client.info()
            print(f"teacher at {server.target}: {info.model_id} ({info.backend}, vocabulary "
                  f"{info.vocab_size}, context {info.max_context}, tokenizer {info.tokenizer_fingerprint[:12]})")
            g = torch.Generator().manual_seed(0)
            seqs = [torch.randint(0, info.vocab_size, (n,), generator=g) for n in (64, 128, 256, 512)]
            start = time.perf_counter()
            results = client.score(seqs, score_from=16, top_k=args.top_k)
            seconds = time.perf_counter() - start
        print(f"\n{'sequence':>8} {'tokens':>6} {'scored':>6} {'mean token logp':>16} {'mean tail logp':>15}")
        for i, (seq, r) in enumerate(zip(seqs, results)):
            print(f"{i:>8} {seq.numel():>6} {r.token_logprobs.numel():>6} "
                  f"{r.token_logprobs.mean().item():>16.3f} {r.tail_logprobs.mean().item():>15.3f}")
        scored = sum(r.token_logprobs.numel() for r in results)
        print(f"\nscored {scored} positions (top-{args.top_k}) in {seconds:.2f} s "
              f"({scored / seconds:,.0f} positions/s)")
    finally:
        code = server.terminate()
    print(f"teacher stopped with exit code {code}")


if __name__ == "__main__":
    main()

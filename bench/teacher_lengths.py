"""What real lengths cost the teacher, measured side by side in one run.

    python -m bench.teacher_lengths [--runs 3] [--no-vllm]

On a random-weight Llama (the `bench` preset of scripts/tiny_model.py: hidden 256, 4 layers,
vocabulary 32,000, float32), one CPU thread. Printed:

1. Generate, transformers backend: peak memory added by one call (16 samples x 128 new tokens),
   recording the chosen tokens' log-probs step by step (what the backend does) / keeping every
   step's logits (`generate(output_logits=True)`, what it did: B x steps x V floats). Each side
   runs in its own process, so the peaks (ru_maxrss) do not mix.
2. Verify, both backends: time of one Verify (8 draft tokens, greedy) after prefixes of 64 .. 960
   tokens, without a session: each round re-runs the whole prefix, so time grows with the prefix.
2b. Verify sessions, transformers backend: a whole 1,024-token completion after a 64-token prompt
   verified in rounds of 8 drafts (greedy; the drafts are the teacher's own greedy continuation,
   none or 10% of draft tokens replaced so that the teacher cuts there), each round with a
   session key / without: total seconds and tokens run through the decoder, against n. On the
   bench model and a 16-layer copy (a real teacher's layers outweigh its LM head far more).
2c. Score, transformers backend: 8 samples of one 1,024-token prompt with 64-token answers, the
   answers scored, in one call: the prompt run once (--share-prefixes, the default) / by every
   sample (--no-share-prefixes).
3. Score, vllm backend: 8 sequences x 512 tokens with only the last 16 positions scored
   (score_from = 496) / the same prefill with no prompt log-probs (max_tokens=1). The backend runs
   each start into vLLM's prefix cache and scores the rest from it, so that vLLM (which has no
   start row for top-k prompt log-probs) computes them at the scored positions only; the third
   column is the old way, `prompt_logprobs=k` over the whole sequence with the cache unread.
   Every call gets sequences never seen before (a repeat would find them cached).
Every timing is the median of --runs, the sides interleaved. The engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) with 1 GiB of KV cache, as in the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ENV = dict(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
os.environ.update(ENV)          # before vLLM is imported

import torch  # noqa: E402

from bench.timing import median_time  # noqa: E402
from scripts.tiny_model import make_tiny_model  # noqa: E402
from teacher_server.config import ServerSettings  # noqa: E402
from teacher_server.scoring import ScoreItem  # noqa: E402
from teacher_server.verify import VerifyItem  # noqa: E402

VOCAB, SAMPLES, NEW_TOKENS, DRAFT = 32000, 16, 128, 8
PREFIXES = (64, 256, 960)
PROMPT, COMPLETION = 64, 1024

# Runs in a child process: argv = model dir, "recorder" | "all_logits"; prints the peak RSS (MiB)
# one Generate call adds over a warmed-up backend.
_GENERATE_CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from teacher_server.backends.hf import TransformersBackend
from teacher_server.config import ServerSettings
from teacher_server.generation import GenerateItem
model_dir, way, samples, new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
backend = TransformersBackend.from_settings(ServerSettings(model=model_dir, device="cpu"))
prompt = torch.randint(4, 32000, (16,), generator=torch.Generator().manual_seed(0))
item = GenerateItem([prompt], samples, 1.0, 1.0, new, [-1], seed=0)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
backend.generate([GenerateItem([prompt], samples, 1.0, 1.0, 2, [-1], seed=0)])   # warm
before = peak()
if way == "recorder":
    backend.generate([item])
else:
    ids = prompt.expand(samples, -1)
    with torch.no_grad():   # the old way: every step's raw logits kept until the call returns
        backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                               max_new_tokens=new, return_dict_in_generate=True, output_logits=True)
print(json.dumps(peak() - before))
"""


def generate_peak_mib(model_dir, way: str) -> float:
    out = subprocess.run([sys.executable, "-c", _GENERATE_CHILD, str(model_dir), way,
                          str(SAMPLES), str(NEW_TOKENS)],
                         capture_output=True, text=True, check=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def verify_times(backend, runs: int) -> list[float]:
    g = torch.Generator().manual_seed(1)
    items = {P: VerifyItem(torch.randint(4, VOCAB, (P,), generator=g),
                           torch.randint(4, VOCAB, (DRAFT,), generator=g), None, "greedy", 1.0,
                           1, 8, 0) for P in PREFIXES}
    backend.score([items[PREFIXES[0]]])       # warm
    t = {P: [] for P in PREFIXES}
    for _ in range(runs):
        for P, item in items.items():
            t[P].append(median_time(lambda: backend.score([item]), 1))
    return [statistics.median(t[P]) for P in PREFIXES]


def decode_with_verify(backend, reference: torch.Tensor, corrupt: float, session: bool) -> tuple[float, int, int]:
    """Verify reference[PROMPT:] in rounds of DRAFT greedy drafts taken from the reference (the
    teacher's own greedy continuation), each draft token replaced by a wrong one with probability
    `corrupt`; returns (seconds, tokens the decoder ran, rounds). The next prefix is always the
    reference's (the teacher's greedy correction is the reference token), so both sides run the
    same rounds."""
    ran = 0
    forward = backend.decoder.forward

    def counting(*args, **kwargs):
        nonlocal ran
        ran += int(kwargs["attention_mask"].sum()) if kwargs.get("attention_mask") is not None \
            else kwargs["input_ids"].numel()
        return forward(*args, **kwargs)

    g = torch.Generator().manual_seed(3)
    end, rounds = PROMPT, 0
    backend.decoder.forward = counting
    try:
        start = time.perf_counter()
        while end < reference.numel():
            draft = reference[end:end + DRAFT].clone()
            wrong = torch.rand(draft.numel(), generator=g) < corrupt
            draft[wrong] = (draft[wrong] + 1) % VOCAB
            [out] = backend.score([VerifyItem(reference[:end], draft, None, "greedy", 1.0, 1, 8, 0, "bench",
                                              "s" if session else "")])
            end += out.num_accepted + 1
            rounds += 1
        seconds = time.perf_counter() - start
    finally:
        backend.decoder.forward = forward
    if backend.sessions is not None:
        backend.sessions.entries.clear()
        backend.sessions.nbytes = 0
    return seconds, ran, rounds


def session_rows(backends: dict, runs: int) -> None:
    """The Verify-session table, one block of rows per model (backends: {label: backend})."""
    print(f"\nVerify sessions (transformers): a {COMPLETION}-token completion after {PROMPT} prompt tokens in "
          f"rounds of {DRAFT} greedy drafts; medians of {runs}")
    print("| model | wrong drafts | rounds | tokens run, with sessions / n | without / n | seconds with | without | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for label, backend in backends.items():
        session_row(label, backend, runs)


def session_row(label: str, backend, runs: int) -> None:
    prompt = torch.randint(4, VOCAB, (PROMPT,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = backend.model.generate(prompt[None], attention_mask=torch.ones(1, PROMPT, dtype=torch.long),
                                           do_sample=False, max_new_tokens=COMPLETION, min_new_tokens=COMPLETION,
                                           eos_token_id=None)[0]
    for corrupt in (0.0, 0.1):
        t, tokens = {True: [], False: []}, {}
        for _ in range(runs):
            for session in (False, True):
                seconds, tokens[session], rounds = decode_with_verify(backend, reference, corrupt, session)
                t[session].append(seconds)
        t = {side: statistics.median(v) for side, v in t.items()}
        print(f"| {label} | {corrupt:.0%} a token | {rounds} | {tokens[True] / COMPLETION:.2f} | "
              f"{tokens[False] / COMPLETION:.1f} | {t[True]:.2f} | {t[False]:.2f} | {t[False] / t[True]:.1f}x |")


def shared_prompt_row(backend, runs: int) -> None:
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(4, VOCAB, (COMPLETION,), generator=g)
    item = ScoreItem.pack([torch.cat([prompt, torch.randint(4, VOCAB, (64,), generator=g)]) for _ in range(8)],
                          COMPLETION, 20)
    t = {True: [], False: []}
    for _ in range(runs):
        for share in (False, True):
            backend.share_prefixes = share
            backend.score([item])                     # warm
            t[share].append(median_time(lambda: backend.score([item]), 1))
    backend.share_prefixes = True
    t = {side: statistics.median(v) for side, v in t.items()}
    print(f"\nScore (transformers): 8 samples of a {COMPLETION}-token prompt with 64-token answers; medians of "
          f"{runs}: prompt run once {t[True]:.3f} s / by every sample {t[False]:.3f} s = {t[True] / t[False]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-vllm", action="store_true", help="skip the vllm backend's rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_vllm = not args.no_vllm and importlib.util.find_spec("vllm") is not None
    from teacher_server.backends.hf import TransformersBackend

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        model_dir = make_tiny_model(tmp / "bench-model", preset="bench", max_position_embeddings=2048)
        kept = SAMPLES * NEW_TOKENS * VOCAB * 4 / 2**20
        peaks = {way: generate_peak_mib(model_dir, way) for way in ("recorder", "all_logits")}
        print(f"Generate ({SAMPLES} samples x {NEW_TOKENS} tokens, vocabulary {VOCAB}): peak "
              f"memory added {peaks['recorder']:.0f} MiB step by step vs {peaks['all_logits']:.0f} "
              f"MiB keeping every step's logits (their size: {kept:.0f} MiB); "
              f"ratio {peaks['all_logits'] / max(peaks['recorder'], 1):.1f}x")

        backends = {"transformers": TransformersBackend.from_settings(
            ServerSettings(model=str(model_dir), device="cpu"))}
        if use_vllm:
            from teacher_server.backends.vllm_backend import VllmBackend

            os.environ["VLLM_CACHE_ROOT"] = str(tmp / "vllm-cache")
            backends["vllm"] = VllmBackend.from_settings(ServerSettings(
                model=str(model_dir), backend="vllm", dtype="float32", max_top_k=64,
                vllm_enforce_eager=True))
        print(f"\nVerify ({DRAFT} draft tokens, greedy), seconds per call by prefix length; "
              f"medians of {args.runs}")
        print("| backend | " + " | ".join(f"prefix {P}" for P in PREFIXES) +
              f" | {PREFIXES[-1]} / {PREFIXES[0]} |")
        print("|---|" + "---|" * (len(PREFIXES) + 1))
        for name, backend in backends.items():
            t = verify_times(backend, args.runs)
            print(f"| {name} | " + " | ".join(f"{s:.3f}" for s in t) + f" | {t[-1] / t[0]:.1f}x |")
        # the bench model's LM head (32,000 x 256) outweighs its 4 layers, which a real teacher's
        # layers do not (Llama-3-8B: 7B in layers, 0.5B in the head): the deeper copy shows the trend
        deep_dir = make_tiny_model(tmp / "bench-deep", preset="bench", max_position_embeddings=2048,
                                   num_hidden_layers=16)
        session_rows({"bench, 4 layers": backends["transformers"],
                      "bench, 16 layers": TransformersBackend.from_settings(
                          ServerSettings(model=str(deep_dir), device="cpu"))}, args.runs)
        shared_prompt_row(backends["transformers"], args.runs)

        if use_vllm:
            from vllm import SamplingParams

            vllm = backends["vllm"]
            g = torch.Generator().manual_seed(2)
            fresh = lambda: [torch.randint(4, VOCAB, (512,), generator=g) for _ in range(8)]  # noqa: E731
            as_prompts = lambda seqs: [{"prompt_token_ids": s.tolist()} for s in seqs]  # noqa: E731
            plain = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                   skip_reading_prefix_cache=True)
            print(f"\nScore, vllm backend: 8 x 512 tokens, positions 496..511 scored; "
                  f"medians of {args.runs}")
            print("| k | Score | prefill alone | ratio | old way: log-probs at all 511 positions | ratio |")
            print("|---|---|---|---|---|---|")
            for k in (20, 64):
                old = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, flat_logprobs=True,
                                     prompt_logprobs=k)
                sides = dict(score=lambda: vllm.score([ScoreItem.pack(fresh(), 496, k)]),
                             prefill=lambda: vllm.engine.run(as_prompts(fresh()), [plain] * 8),
                             old=lambda: vllm.engine.run(as_prompts(fresh()), [old] * 8))
                for fn in sides.values():
                    fn()                                 # warm
                t = {name: [] for name in sides}
                for _ in range(args.runs):
                    for name, fn in sides.items():
                        t[name].append(median_time(fn, 1))
                t = {name: statistics.median(v) for name, v in t.items()}
                print(f"| {k} | {t['score']:.3f} s | {t['prefill']:.3f} s | {t['score'] / t['prefill']:.2f}x | "
                      f"{t['old']:.3f} s | {t['old'] / t['prefill']:.2f}x |")


if __name__ == "__main__":
    main()

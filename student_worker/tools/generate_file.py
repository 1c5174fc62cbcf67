"""distill-generate INPUT OUT_DIR --teacher HOST:PORT --tokenizer DIR [--num-samples N] [--max-new-tokens M] ...

Sample the teacher once, train many times: the offline data path of `seqkd` (`sft` on the cache
is seqkd without a live teacher). INPUT is what data.source takes: a JSONL file of chat
`messages` or `prompt` records, a datasets folder or a built-in task; its prompts are rendered by
the worker's own data path (the tokenizer's chat template), so the cache holds exactly the
prompt ids a training run would send. --tokenizer must be the teacher's (fingerprint checked).

OUT_DIR/cache.json records the settings and the teacher; OUT_DIR/shard-00000.jsonl holds the
samples of prompts [0, P), the next [P, 2P) and so on (P = --shard-prompts), one JSON object per
kept sample:
  {"line", "sample", "prompt", "prompt_ids", "completion", "completion_ids", "logprobs",
   "finish_reason", "reward"}
A shard already on disk is kept, so a stopped run continues where it was, with the same samples
(each request's seed derives from --seed and its first prompt); a run with other settings than
cache.json's is refused. --best-of-task NAME keeps, per prompt, the sample the task's check scores
highest (its reward), else every sample is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from distill.client.teacher_client import TeacherClient
from distill.fingerprint import tokenizer_fingerprint
from student_worker.config import DataConfig
from student_worker.data.cache import GENERATE_MANIFEST
from student_worker.data.prompts import Example, PromptData
from student_worker.seeding import derive_seed
from student_worker.tasks import TASKS, Task
from student_worker.tools.score_file import add_job_arguments, connect


def records(examples: list[Example], first: int, samples, tokenizer, task: Task | None) -> list[dict]:
    """The kept samples of examples (lines first, first + 1, ...) as JSON records."""
    out = []
    for offset, (ex, options) in enumerate(zip(examples, samples)):
        rows = []
        for j, smp in enumerate(options):
            completion = tokenizer.decode(smp.token_ids.tolist(), skip_special_tokens=True)
            rows.append({"line": first + offset, "sample": j, "prompt": ex.prompt, "prompt_ids": ex.prompt_ids,
                         "completion": completion, "completion_ids": smp.token_ids.tolist(),
                         "logprobs": [round(x, 6) for x in smp.logprobs.tolist()],
                         "finish_reason": smp.finish_reason,
                         "reward": task.check(ex.prompt, completion) if task else None})
        out += [max(rows, key=lambda r: r["reward"])] if task else rows
    return out


def generate_file(client: TeacherClient, examples: list[Example], out_dir: Path, tokenizer, *,
                  settings: dict, task: Task | None, batch_prompts: int, concurrency: int) -> dict:
    """Every shard of `examples` that OUT_DIR lacks; the totals (prompts, samples, tokens, seconds)."""
    s = settings
    shard_prompts = s["shard_prompts"]

    def request(first: int) -> list:
        batch = examples[first:first + batch_prompts]
        return client.generate([ex.prompt_ids for ex in batch], num_samples=s["num_samples"],
                               temperature=s["temperature"], top_p=s["top_p"], max_new_tokens=s["max_new_tokens"],
                               seed=derive_seed(s["seed"], "distill-generate", first))

    done = {"prompts": 0, "samples": 0, "completion_tokens": 0, "shards_kept": 0}
    start = time.monotonic()
    bar = tqdm(total=len(examples), desc="distill-generate", unit="prompt", dynamic_ncols=True)
    with ThreadPoolExecutor(concurrency) as pool:   # several requests in flight: the teacher batches them
        for number, first in enumerate(range(0, len(examples), shard_prompts)):
            path = out_dir / f"shard-{number:05d}.jsonl"
            shard = examples[first:first + shard_prompts]
            if path.exists():
                done["shards_kept"] += 1
                bar.update(len(shard))
                continue
            firsts = range(first, first + len(shard), batch_prompts)
            samples = [options for answer in pool.map(request, firsts) for options in answer]
            rows = records(shard, first, samples, tokenizer, task)
            partial = path.with_suffix(".partial")   # a shard appears whole or not at all
            partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
            partial.replace(path)
            done["prompts"] += len(shard)
            done["samples"] += len(rows)
            done["completion_tokens"] += sum(len(r["completion_ids"]) for r in rows)
            elapsed = time.monotonic() - start
            bar.set_postfix_str(f"{done['completion_tokens'] / elapsed:,.0f} kept tokens/s")
            bar.update(len(shard))
    bar.close()
    done["seconds"] = round(time.monotonic() - start, 3)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-generate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("input", help="JSONL file, datasets folder or built-in task (as data.source)")
    parser.add_argument("out_dir", type=Path, help="folder for cache.json and the shards")
    parser.add_argument("--tokenizer", required=True, help="the teacher's tokenizer (folder or hub id)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--best-of-task", choices=sorted(TASKS),
                        help="keep each prompt's best sample by this task's check")
    parser.add_argument("--shard-prompts", type=int, default=1024, help="prompts per shard")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per request")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("num_samples", "max_new_tokens", "shard_prompts", "batch_prompts", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    task = TASKS[args.best_of_task] if args.best_of_task else None
    with connect(args) as client:
        info = client.info()
        if tokenizer_fingerprint(tokenizer) != info.tokenizer_fingerprint:
            parser.error(f"--tokenizer {args.tokenizer} is not the teacher's ({info.model_id}): the tokenizer "
                         "fingerprints differ, so its token ids would mean other text")
        limit = info.max_context - args.max_new_tokens if info.max_context else None
        if limit is not None and limit < 1:
            parser.error(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the teacher's "
                         f"context of {info.max_context} tokens")
        try:
            data = PromptData(DataConfig(source=args.input, split=args.split, num_examples=args.num_examples,
                                         max_prompt_tokens=limit), tokenizer)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        if data.filtered:
            print(f"left out {data.filtered} prompts longer than {limit} tokens (the teacher's context "
                  f"{info.max_context} minus --max-new-tokens)", file=sys.stderr)
        settings = {"input": args.input, "split": args.split, "num_examples": args.num_examples,
                    "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                    "best_of_task": args.best_of_task, "shard_prompts": args.shard_prompts}
        manifest = {"format": "distill-generate", "version": 1, "settings": settings, "prompts": len(data.examples),
                    "teacher": {"model_id": info.model_id, "backend": info.backend,
                                "tokenizer_fingerprint": info.tokenizer_fingerprint}}
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / GENERATE_MANIFEST
        if path.exists():
            before = json.loads(path.read_text())
            differ = sorted(k for k in {*before["settings"], *settings}
                            if before["settings"].get(k) != settings.get(k))
            if differ or before["teacher"] != manifest["teacher"]:
                parser.error(f"{path} was written with other settings ({', '.join(differ) or 'the teacher'}); "
                             "continue with the same ones or pick another OUT_DIR")
        else:
            path.write_text(json.dumps(manifest, indent=1) + "\n")
        done = generate_file(client, data.examples, args.out_dir, tokenizer, settings=settings, task=task,
                             batch_prompts=args.batch_prompts, concurrency=args.concurrency)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""distill-score INPUT.jsonl OUT_DIR --teacher HOST:PORT [--top-k 20] [--tokenizer DIR] ...

Score a JSONL file against a running teacher and write the teacher's top-k log-probs as
safetensors shards: the building block for caching teacher outputs offline (score once, train
many times). One JSON object a line, either
  {"token_ids": [1, 5, 9, ...], "score_from": 1}     score_from: first scored position (default 1)
  {"text": "..."}                                     with --tokenizer: every position from 1
  {"prompt": "...", "completion": "..."}              with --tokenizer: the completion's positions
  {"messages": [...]}                                 with --tokenizer: the last assistant turn's
Prompt and chat records are tokenized as the worker's data path does (chat template, EOS after the
completion), so the shards hold the completions a training run reads. INPUT may also be a
distill-generate folder (its samples are scored), or with --tokenizer a built-in task or datasets
folder as data.source takes it (--split, --num-examples; a task's name is kept in the shards, so a
run training from them evaluates on that task). --tokenizer must be the teacher's (its
fingerprint is checked against the teacher's Info).

A training run reads the folder as data.source (student_worker/data/cache.py): kd and every
top-k divergence train from it without calling the teacher.

OUT_DIR/shard-00000.safetensors holds input lines [0, S), the next [S, 2S) and so on
(S = --shard-sequences); a shard already on disk is skipped, so a stopped run continues where it
was. Each shard, for its n sequences (concatenated; row i of a sequence's block is its position
score_from + i):
  line [n] int64, score_from [n] int32, token_offsets [n+1] int64, token_ids [T],
  row_offsets [n+1] int64, topk_ids [N, k], topk_logprobs [N, k], token_logprobs [N],
  tail_logprobs [N] (float32, or float16 with --dtype float16; ids uint16 where the teacher's
  vocabulary fits, else int32: 90 bytes a scored position at k = 20 with float16 and uint16,
  shards whole, in bench/offline_cache.py)
and metadata: the teacher's model id, backend and tokenizer fingerprint, top_k. `read_shard`
gives the sequences back one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from distill.client.teacher_client import TeacherClient
from distill.fingerprint import tokenizer_fingerprint
from distill.results import TeacherScores
from distill.tls import add_client_arguments
from student_worker.config import DataConfig
from student_worker.data.cache import GENERATE_MANIFEST, GENERATE_SHARDS, ScoreShard
from student_worker.data.prompts import PromptData, example_from_record
from student_worker.rollouts.tokens import eos_ids_of


def read_sequences(path: Path, tokenizer=None, split: str = "train",
                   num_examples: int = 4096) -> list[tuple[list[int], int]]:
    """(token ids, score_from) of every record of INPUT: a JSONL file, a distill-generate folder,
    or (with a tokenizer) a built-in task or datasets folder as data.source takes it."""
    if (path / GENERATE_MANIFEST).is_file():
        records = [json.loads(line) for shard in sorted(path.glob(GENERATE_SHARDS))
                   for line in shard.read_text().splitlines()]
        return [(r["prompt_ids"] + r["completion_ids"], len(r["prompt_ids"])) for r in records]
    if path.suffix != ".jsonl":
        if tokenizer is None:
            raise ValueError(f"{path}: a task or datasets folder needs --tokenizer")
        examples = PromptData(DataConfig(source=str(path), split=split, num_examples=num_examples),
                              tokenizer).examples
        missing = [i for i, ex in enumerate(examples) if ex.completion_ids is None]
        if missing:
            raise ValueError(f"{path}: examples {missing[:5]} have no completion to score")
        return [(ex.prompt_ids + ex.completion_ids, len(ex.prompt_ids)) for ex in examples]
    sequences = []
    data = DataConfig(source=str(path))
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "token_ids" in row:
                sequences.append((list(row["token_ids"]), int(row.get("score_from", 1))))
                continue
            if tokenizer is None:
                raise ValueError(f"{path}:{number}: a text line needs --tokenizer (or give token_ids)")
            if "text" in row:
                sequences.append((tokenizer(row["text"])["input_ids"], 1))
                continue
            if data.prompt_field not in row and data.messages_field not in row:
                raise ValueError(f"{path}:{number}: expected token_ids, text, prompt and completion, or "
                                 f"chat messages; got keys {sorted(row)}")
            # as the worker tokenizes it (chat template, EOS after the completion): a cache of the
            # completions a training run reads
            ex = example_from_record(data, tokenizer, row, eos_ids_of(tokenizer), f"{path}:{number}")
            if ex.completion_ids is None:
                raise ValueError(f"{path}:{number}: no completion to score (a 'completion' field, or an "
                                 "assistant message last)")
            sequences.append((ex.prompt_ids + ex.completion_ids, len(ex.prompt_ids)))
    return sequences


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every token id (uint16 up to 65,536 ids)."""
    return torch.uint16 if vocab_size <= 1 << 16 else torch.int32


def shard_tensors(lines: list[int], sequences: list[tuple[list[int], int]],
                  scores: list[TeacherScores], dtype: torch.dtype,
                  ids: torch.dtype = torch.int32) -> dict[str, torch.Tensor]:
    """One shard's arrays (see the module docstring); token ids as `ids`."""
    offsets = lambda sizes: torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)
    return {
        "line": torch.tensor(lines, dtype=torch.int64),
        "score_from": torch.tensor([start for _, start in sequences], dtype=torch.int32),
        "token_offsets": offsets([len(ids) for ids, _ in sequences]),
        "token_ids": torch.tensor([t for seq, _ in sequences for t in seq], dtype=torch.int64).to(ids),
        "row_offsets": offsets([s.token_logprobs.numel() for s in scores]),
        "topk_ids": torch.cat([s.topk_ids for s in scores]).to(ids),
        "topk_logprobs": torch.cat([s.topk_logprobs for s in scores]).to(dtype),
        "token_logprobs": torch.cat([s.token_logprobs for s in scores]).to(dtype),
        "tail_logprobs": torch.cat([s.tail_logprobs for s in scores]).to(dtype),
    }


def read_shard(path: str | os.PathLike):
    """Yield (line, token_ids [T] int64, score_from, TeacherScores) for every sequence of a shard."""
    shard = ScoreShard(Path(path))
    for i, line in enumerate(shard.file.get_tensor("line").tolist()):
        ids, score_from, scores = shard.record(i)
        yield line, torch.tensor(ids), score_from, scores


def shard_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return f.metadata()


def score_file(client: TeacherClient, sequences: list[tuple[list[int], int]], out_dir: Path, *,
               top_k: int, shard_sequences: int, batch_sequences: int, concurrency: int,
               dtype: str, metadata: dict[str, str], vocab_size: int = 1 << 31) -> list[Path]:
    """Score `sequences` into shards under `out_dir` (existing shards are kept); the shard paths.
    Token ids are stored as the smallest type that holds vocab_size ids."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]

    def score(batch: list[tuple[list[int], int]]) -> list[TeacherScores]:
        return client.score([ids for ids, _ in batch], [start for _, start in batch], top_k,
                            dtype=dtype)

    paths = []
    # several requests in flight: the teacher merges them into full forward passes
    with ThreadPoolExecutor(concurrency) as pool:
        for number, first in enumerate(range(0, len(sequences), shard_sequences)):
            path = out_dir / f"shard-{number:05d}.safetensors"
            paths.append(path)
            if path.exists():
                continue
            shard = sequences[first:first + shard_sequences]
            batches = [shard[i:i + batch_sequences] for i in range(0, len(shard), batch_sequences)]
            scores = [s for batch_scores in pool.map(score, batches) for s in batch_scores]
            tensors = shard_tensors(list(range(first, first + len(shard))), shard, scores,
                                    torch_dtype, id_dtype(vocab_size))
            partial = path.with_suffix(".partial")       # a shard appears whole or not at all
            save_file(tensors, partial, metadata=metadata)
            partial.replace(path)
            print(f"{path}: {len(shard)} sequences, {tensors['token_logprobs'].numel()} positions",
                  file=sys.stderr)
    return paths


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options distill-score and distill-generate share: the teacher, the input's split and
    size, requests in flight, and what a shared teacher asks of a client (api key, TLS)."""
    parser.add_argument("--teacher", default=os.environ.get("TEACHER_ADDRESS", "127.0.0.1:50051"),
                        help="HOST:PORT, dns:///name:port or a comma-separated list (default: $TEACHER_ADDRESS)")
    parser.add_argument("--split", default="train", help="the input's split (built-in tasks, datasets folders)")
    parser.add_argument("--num-examples", type=int, default=4096, help="examples drawn from a built-in task")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    add_client_arguments(parser)


def connect(args: argparse.Namespace) -> TeacherClient:
    return TeacherClient(args.teacher, timeout=args.timeout, api_key=args.api_key, tls=args.tls,
                         tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-score", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("input", type=Path, help="JSONL file, distill-generate folder, built-in task or "
                                                 "datasets folder")
    parser.add_argument("out_dir", type=Path, help="folder for the safetensors shards")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--tokenizer", help="the teacher's tokenizer (folder or hub id), for text lines")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="log-probs on the wire and in the shards")
    parser.add_argument("--shard-sequences", type=int, default=4096, help="sequences per shard")
    parser.add_argument("--batch-sequences", type=int, default=32, help="sequences per request")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with connect(args) as client:
        info = client.info()
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != info.tokenizer_fingerprint:
            parser.error(f"--tokenizer {args.tokenizer} is not the teacher's ({info.model_id}): "
                         "the tokenizer fingerprints differ, so its token ids would mean other text")
        try:
            sequences = read_sequences(args.input, tokenizer, args.split, args.num_examples)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        metadata = dict(model_id=info.model_id, backend=info.backend, top_k=str(args.top_k),
                        tokenizer_fingerprint=info.tokenizer_fingerprint, source=str(args.input))
        paths = score_file(client, sequences, args.out_dir, top_k=args.top_k,
                           shard_sequences=args.shard_sequences,
                           batch_sequences=args.batch_sequences, concurrency=args.concurrency,
                           dtype=args.dtype, metadata=metadata, vocab_size=info.vocab_size)
    print(json.dumps({"sequences": len(sequences), "shards": [str(p) for p in paths]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

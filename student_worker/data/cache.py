"""Training from the teacher's cached outputs: a `distill-score` folder (completions with the
teacher's top-k + tail log-probs) or a `distill-generate` folder (teacher samples), named as
data.source.

Streaming: a shard is opened when a batch needs it and its tensors are read record by record
(safetensors slices, memory-mapped), so memory does not grow with the cache. Ranks read disjoint
shards: rank r of W owns shards r, r + W, ... (a cache needs at least W shards). An epoch visits a
rank's shards in a seeded order and each shard's records in a seeded order, so a batch is a pure
function of (step, rank): a resumed run continues at the record the interrupted one would have
read next.

A cache is checked when the run starts: its tokenizer fingerprint against the student's, and (a
score cache) its top-k against teacher.top_k; a truncated or foreign shard is an error naming the
file.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from distill.fingerprint import tokenizer_fingerprint
from distill.results import TeacherScores
from student_worker.data.prompts import Example
from student_worker.seeding import derive_seed
from student_worker.tasks import TASKS

GENERATE_MANIFEST = "cache.json"       # distill-generate's settings and the teacher it sampled
SCORE_SHARDS, GENERATE_SHARDS = "shard-*.safetensors", "shard-*.jsonl"


class CacheError(ValueError):
    """A cache that cannot be trained from, with the file and what to do."""


def cache_kind(source: str) -> str | None:
    """'score', 'generate' or None (not a cache folder)."""
    path = Path(source)
    if not path.is_dir():
        return None
    if (path / GENERATE_MANIFEST).is_file():
        return "generate"
    if any(path.glob(SCORE_SHARDS)):
        return "score"
    return None


@dataclass(frozen=True)
class Shard:
    path: Path
    records: int


def fold_top_k(scores: TeacherScores, k: int) -> TeacherScores:
    """The top-k + tail view of a cache written with a larger k: the first k entries (sorted, most
    likely first), the rest of the mass folded into the tail, as the teacher answers at k."""
    if scores.topk_ids.shape[1] == k:
        return scores
    rest = scores.topk_logprobs[:, k:].double()
    tail = torch.logsumexp(torch.cat([rest, scores.tail_logprobs.double()[:, None]], 1), 1)
    return TeacherScores(scores.topk_ids[:, :k], scores.topk_logprobs[:, :k], scores.token_logprobs,
                         tail.float(), None)


def _count_records(path: Path) -> int:
    """A distill-generate shard's records, after checking it ends with a whole record (shards
    are written whole, so a cut one was damaged after: it would fail mid-run)."""
    count, last = 0, ""
    with path.open() as f:
        for line in f:
            if line.strip():
                count, last = count + 1, line
    try:
        json.loads(last)
        if not last.endswith("\n"):
            raise ValueError("no newline after the last record")
    except ValueError as exc:
        raise CacheError(f"{path}: its last record is cut short ({exc}); delete the shard and run "
                         "distill-generate again to rewrite it") from None
    return count


class ScoreShard:
    """One distill-score shard (student_worker/tools/score_file.py's format), open: records read
    one by one as memory-mapped slices. The one reader of that format."""

    def __init__(self, path: Path):
        try:
            self.file = safe_open(str(path), "pt")
            self.token_offsets = self.file.get_tensor("token_offsets").tolist()
            self.row_offsets = self.file.get_tensor("row_offsets").tolist()
            self.score_from = self.file.get_tensor("score_from").tolist()
        except (SafetensorError, OSError, KeyError) as exc:
            raise CacheError(f"{path}: not a readable distill-score shard ({exc}); a shard cut short "
                             "by a stopped run is rewritten when distill-score runs again") from None
        self.path = path

    def record(self, i: int) -> tuple[list[int], int, TeacherScores]:
        """Sequence i: its token ids, score_from, and the teacher's rows (ids int64, log-probs float32)."""
        tokens = self.file.get_slice("token_ids")[self.token_offsets[i]:self.token_offsets[i + 1]]
        rows = slice(self.row_offsets[i], self.row_offsets[i + 1])
        logprobs = (self.file.get_slice(name)[rows].float() for name in ("topk_logprobs", "token_logprobs",
                                                                          "tail_logprobs"))
        scores = TeacherScores(self.file.get_slice("topk_ids")[rows].long(), *logprobs, None)
        return tokens.tolist(), self.score_from[i], scores


class CacheData:
    """data.source naming a cache folder: the interface of PromptData (batch(step), task: the
    built-in task the cache was made from, which evaluation uses, else None)."""

    filtered = 0

    def __init__(self, source: str, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                 batch_size: int = 8, top_k: int | None = None):
        self.kind, self.folder = cache_kind(source), Path(source)
        if self.kind is None:
            raise CacheError(f"data.source {source!r} holds neither distill-score shards ({SCORE_SHARDS}) "
                             f"nor a distill-generate {GENERATE_MANIFEST}")
        self.tokenizer = tokenizer
        shards = self._shards()
        self._check(tokenizer, shards, top_k)
        if len(shards) < world_size:
            raise CacheError(f"{source}: {len(shards)} shard(s) for {world_size} ranks; ranks read disjoint "
                             "shards, so write the cache with smaller shards (--shard-sequences / "
                             "--shard-prompts) or train on fewer ranks")
        self.mine = shards[rank::world_size]
        self.length = sum(s.records for s in self.mine)
        self.batch_size, self.rank, self.seed = batch_size, rank, seed

    # ---- the folder ---------------------------------------------------------------------------

    def _shards(self) -> list[Shard]:
        if self.kind == "score":
            paths = sorted(self.folder.glob(SCORE_SHARDS))
            return [Shard(p, len(ScoreShard(p).score_from)) for p in paths]
        self.manifest = json.loads((self.folder / GENERATE_MANIFEST).read_text())
        paths = sorted(self.folder.glob(GENERATE_SHARDS))
        if not paths:
            raise CacheError(f"{self.folder}: no {GENERATE_SHARDS} yet (distill-generate writes them)")
        return [Shard(p, _count_records(p)) for p in paths]

    def _check(self, tokenizer, shards: list[Shard], top_k: int | None) -> None:
        if self.kind == "score":
            with safe_open(str(shards[0].path), "pt") as f:
                meta = f.metadata() or {}
            where, fingerprint = shards[0].path, meta.get("tokenizer_fingerprint")
            self.task = TASKS.get(meta.get("source", ""))
            self.cached_top_k = int(meta.get("top_k", 0))
            self.top_k = top_k or self.cached_top_k
            if self.top_k > self.cached_top_k:
                raise CacheError(f"{where}: the cache holds the teacher's top-{self.cached_top_k}; "
                                 f"teacher.top_k={top_k} asks for more (set teacher.top_k <= "
                                 f"{self.cached_top_k}, or score again with --top-k {top_k})")
        else:
            where, fingerprint = self.folder / GENERATE_MANIFEST, self.manifest["teacher"]["tokenizer_fingerprint"]
            self.task = TASKS.get(self.manifest["settings"]["input"])
        if fingerprint != tokenizer_fingerprint(tokenizer):
            raise CacheError(f"{where}: written with another tokenizer (fingerprint {str(fingerprint)[:16]}…) "
                             f"than the student's ({tokenizer_fingerprint(tokenizer)[:16]}…): its token ids "
                             "would mean other text to the student")

    def __len__(self) -> int:
        return self.length

    # ---- order --------------------------------------------------------------------------------

    @functools.lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's (shard index, record order) pairs in the epoch's order."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "cache epoch", epoch, self.rank))
        order = torch.randperm(len(self.mine), generator=g).tolist()
        return [(s, torch.randperm(self.mine[s].records, generator=g).tolist()) for s in order]

    def _position(self, index: int) -> tuple[int, int]:
        """(shard index, record) of this rank's index-th record, epochs one after another."""
        epoch, offset = divmod(index, self.length)
        for shard, records in self._epoch(epoch):
            if offset < len(records):
                return shard, records[offset]
            offset -= len(records)
        raise AssertionError("offset beyond the epoch")

    def batch(self, step: int) -> list[Example]:
        positions = [self._position(i) for i in range(step * self.batch_size, (step + 1) * self.batch_size)]
        return [self._example(shard, record) for shard, record in positions]

    # ---- records ------------------------------------------------------------------------------

    @functools.lru_cache(maxsize=1)   # one shard open at a time: records are read in shard order
    def _open(self, shard: int):
        path = self.mine[shard].path
        if self.kind == "score":
            return ScoreShard(path)
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]

    def _example(self, shard: int, record: int) -> Example:
        opened = self._open(shard)
        if self.kind == "generate":
            r = opened[record]
            return Example(r["prompt"], r["completion"], r["prompt_ids"], r["completion_ids"])
        ids, score_from, scores = opened.record(record)
        prompt_ids, completion_ids = ids[:score_from], ids[score_from:]
        return Example(self.tokenizer.decode(prompt_ids), self.tokenizer.decode(completion_ids), prompt_ids,
                       completion_ids, teacher_scores=fold_top_k(scores, self.top_k))

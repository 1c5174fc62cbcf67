"""Offline distillation: distill-generate and distill-score against the real teacher server, then
training runs that read their folders as data.source (student_worker/data/cache.py) with no
teacher: the same losses as online, resumable caches, refusals naming the file."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from student_worker.config import load_config
from student_worker.data.cache import CacheData, CacheError, fold_top_k
from student_worker.seeding import derive_seed
from student_worker.tools import generate_file, score_file
from student_worker.train.trainer import train

TRAIN = ["data.batch_size=2", "sampling.max_new_tokens=6", "optim.lr=3e-3", "train.steps=4", "train.lag=0"]


@pytest.fixture(scope="module")
def caches(teacher, student_dir, data_file, tmp_path_factory):
    """A generate cache of the fixed prompts (2 samples each, shards of 2 prompts = 4 samples) and
    a score cache of its samples in the same layout (shards of 4 sequences)."""
    root = tmp_path_factory.mktemp("caches")
    generated, scored = root / "generated", root / "scored"
    assert generate_file.main([str(data_file), str(generated), "--teacher", teacher.target, "--tokenizer",
                               str(student_dir), "--num-samples", "2", "--max-new-tokens", "6",
                               "--shard-prompts", "2", "--batch-prompts", "1", "--seed", "3"]) == 0
    assert score_file.main([str(generated), str(scored), "--teacher", teacher.target, "--top-k", "16",
                            "--shard-sequences", "4"]) == 0
    return generated, scored


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_caches_hold_the_teachers_samples_and_scores(caches, client, student_dir):
    generated, scored = caches
    rows = [json.loads(line) for path in sorted(generated.glob("shard-*.jsonl")) for line in path.open()]
    assert [(r["line"], r["sample"]) for r in rows] == [(i, j) for i in range(4) for j in range(2)]
    manifest = json.loads((generated / "cache.json").read_text())
    assert manifest["prompts"] == 4 and manifest["settings"]["num_samples"] == 2
    # the teacher's samples as the client gets them: the same seed per request gives the same ones
    again = client.generate([rows[0]["prompt_ids"]], num_samples=2, max_new_tokens=6,
                            seed=derive_seed(3, "distill-generate", 0))
    assert [s.token_ids.tolist() for s in again[0]] == [r["completion_ids"] for r in rows[:2]]
    # the score cache: every sample's completion positions, as Score answers them
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    data = CacheData(str(scored), tokenizer, batch_size=8)
    assert data.kind == "score" and len(data) == 8 and data.top_k == 16
    examples = data.batch(0)
    direct = client.score([e.prompt_ids + e.completion_ids for e in examples],
                          [len(e.prompt_ids) for e in examples], top_k=16)
    for ex, want in zip(examples, direct):
        assert torch.equal(ex.teacher_scores.topk_ids, want.topk_ids)
        torch.testing.assert_close(ex.teacher_scores.topk_logprobs, want.topk_logprobs, atol=1e-5, rtol=0)


def test_kd_from_the_score_cache_equals_kd_online(caches, teacher, student_dir, tmp_path):
    """The same completions in the same order: online the worker calls Score per batch, offline
    it reads the cache and has no teacher at all; the losses agree step for step."""
    generated, scored = caches
    online = load_config(None, "kd", [f"student.path={student_dir}", f"teacher.target={teacher.target}",
                                      f"data.source={generated}", "teacher.top_k=16", *TRAIN])
    offline = load_config(None, "kd", [f"student.path={student_dir}", "teacher=null", f"data.source={scored}",
                                       *TRAIN])
    train(online, tmp_path / "online", progress=False)
    train(offline, tmp_path / "offline", progress=False)
    a, b = _losses(tmp_path / "online"), _losses(tmp_path / "offline")
    assert len(a) == 4 and a[0] != a[-1]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=1e-5)


def test_a_run_from_the_cache_resumes_where_it_stopped(caches, student_dir, tmp_path):
    """Stopped after 2 of 5 steps (the cache's epoch is 4 batches: the resume crosses it), then
    --resume: the same weights as the run that never stopped."""
    _, scored = caches
    options = [f"student.path={student_dir}", "teacher=null", f"data.source={scored}", *TRAIN, "train.steps=5"]
    straight = train(load_config(None, "kd", options), tmp_path / "a", progress=False)
    assert train(load_config(None, "kd", [*options, "train.stop_after=2"]), tmp_path / "b",
                 progress=False).name == "step-000002"
    resumed = train(load_config(None, "kd", options), tmp_path / "b", resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_sft_on_the_generate_cache_is_offline_seqkd(caches, student_dir, tmp_path):
    generated, _ = caches
    cfg = load_config(None, "sft", [f"student.path={student_dir}", "teacher=null", f"data.source={generated}",
                                    *TRAIN, "train.steps=6"])
    train(cfg, tmp_path / "sft", progress=False)
    losses = _losses(tmp_path / "sft")
    assert losses[-1] < losses[0]


def test_a_cache_with_a_smaller_top_k_is_folded_like_the_teacher_answers(caches, client, student_dir):
    _, scored = caches
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    examples = CacheData(str(scored), tokenizer, batch_size=2, top_k=4).batch(0)
    direct = client.score([e.prompt_ids + e.completion_ids for e in examples],
                          [len(e.prompt_ids) for e in examples], top_k=4)
    for ex, want in zip(examples, direct):
        assert ex.teacher_scores.topk_ids.shape[1] == 4 and torch.equal(ex.teacher_scores.topk_ids, want.topk_ids)
        torch.testing.assert_close(ex.teacher_scores.tail_logprobs, want.tail_logprobs, atol=1e-4, rtol=0)
    same = examples[0].teacher_scores
    assert fold_top_k(same, 4) is same


def test_ranks_read_disjoint_shards_and_batches_are_a_function_of_the_step(caches, student_dir):
    generated, scored = caches
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    for folder in (generated, scored):
        r0, r1 = (CacheData(str(folder), tokenizer, rank, 2, seed=5, batch_size=2) for rank in (0, 1))
        seen0 = {tuple(e.completion_ids) + tuple(e.prompt_ids) for step in range(2) for e in r0.batch(step)}
        seen1 = {tuple(e.completion_ids) + tuple(e.prompt_ids) for step in range(2) for e in r1.batch(step)}
        assert len(seen0) == len(seen1) == 4 and not seen0 & seen1      # an epoch: each rank its own 4
        fresh = CacheData(str(folder), tokenizer, 1, 2, seed=5, batch_size=2)   # a resumed run
        assert [e.completion_ids for e in fresh.batch(3)] == [e.completion_ids for e in r1.batch(3)]
        with pytest.raises(CacheError, match="2 shard\\(s\\) for 3 ranks"):
            CacheData(str(folder), tokenizer, 0, 3)


def test_stopped_runs_continue_without_duplicates(caches, teacher, student_dir, data_file, tmp_path):
    generated, scored = caches
    copy = tmp_path / "generated"
    copy.mkdir()
    (copy / "cache.json").write_text((generated / "cache.json").read_text())
    (copy / "shard-00000.jsonl").write_text((generated / "shard-00000.jsonl").read_text())
    (copy / "shard-00001.partial").write_text('{"cut": ')   # killed while writing the second shard
    args = [str(data_file), str(copy), "--teacher", teacher.target, "--tokenizer", str(student_dir),
            "--num-samples", "2", "--max-new-tokens", "6", "--shard-prompts", "2", "--batch-prompts", "1",
            "--seed", "3"]
    assert generate_file.main(args) == 0
    for name in ("shard-00000.jsonl", "shard-00001.jsonl"):
        assert (copy / name).read_text() == (generated / name).read_text()
    with pytest.raises(SystemExit):   # other settings than the folder's: refused
        generate_file.main([*args[:-1], "4"])
    again = tmp_path / "scored"
    again.mkdir()
    first = scored / "shard-00000.safetensors"
    (again / first.name).write_bytes(first.read_bytes())
    assert score_file.main([str(copy), str(again), "--teacher", teacher.target, "--top-k", "16",
                            "--shard-sequences", "4"]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_bad_caches_are_refused_naming_the_file(caches, student_dir, tmp_path):
    generated, scored = caches
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    with pytest.raises(CacheError, match="top-16; teacher.top_k=32 asks for more"):
        CacheData(str(scored), tokenizer, top_k=32)
    cut = tmp_path / "cut"
    cut.mkdir()
    whole = (scored / "shard-00000.safetensors").read_bytes()
    (cut / "shard-00000.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CacheError, match="cut/shard-00000.safetensors: not a readable distill-score shard"):
        CacheData(str(cut), tokenizer)
    other = tmp_path / "other"
    other.mkdir()
    tensors = load_file(scored / "shard-00000.safetensors")
    meta = score_file.shard_metadata(scored / "shard-00000.safetensors")
    save_file(tensors, other / "shard-00000.safetensors", metadata={**meta, "tokenizer_fingerprint": "f00d"})
    with pytest.raises(CacheError, match="other/shard-00000.safetensors: written with another tokenizer"):
        CacheData(str(other), tokenizer)
    with pytest.raises(CacheError, match="holds neither distill-score shards"):
        CacheData(str(tmp_path), tokenizer)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in generated.iterdir():
        (damaged / path.name).write_text(path.read_text())
    text = (generated / "shard-00001.jsonl").read_text()
    (damaged / "shard-00001.jsonl").write_text(text[:-20])
    with pytest.raises(CacheError, match="damaged/shard-00001.jsonl: its last record is cut short"):
        CacheData(str(damaged), tokenizer)


def test_a_run_without_teacher_needs_scores_for_every_completion(caches, student_dir, tmp_path):
    """gkd samples from the student, whose completions no cache holds: refused at start."""
    _, scored = caches
    cfg = load_config(None, "gkd", [f"student.path={student_dir}", "teacher=null", f"data.source={scored}", *TRAIN])
    with pytest.raises(SystemExit, match="needs a teacher: set teacher.target \\(a distill-score cache"):
        train(cfg, tmp_path / "gkd", progress=False)

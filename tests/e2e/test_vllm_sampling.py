"""The student's vLLM engine (the CPU build, float32, in this process) against the training model
and the hf engine: weight syncs, greedy parity, stop ids, seeds, padded ids masked; the cache
emptied before a wake-up; training runs with sampling.engine=vllm through the real teacher
server (the sampler-mismatch metric and TIS weights as pure functions:
tests/unit/test_sampler_mismatch.py). One engine for the
module (it takes tens of seconds to start here; the runs borrow it); every engine test first
loads the weights it needs, so order does not matter."""

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.config import load_config
from student_worker.data.prompts import PromptData
from student_worker.methods import Context, StudentSamples
from student_worker.rollouts.rollout import Rollout, token_batch
from student_worker.rollouts.sampler_mismatch import (sampler_logprob_diff, sampler_logprobs_grid,
                                                      trainer_token_logprobs)
from student_worker.rollouts.sampling import sample as hf_sample
from student_worker.train.trainer import train
from student_worker.rollouts.vocab import RealVocabHead
from tests.helpers import worker_cmd

pytestmark = pytest.mark.vllm

EOS, PAD = 2, 0
PROMPTS = [[1, 40, 41, 42], [1, 77], [1, 90, 91, 92, 93, 94, 95], [1, 33, 34]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-vllm", preset="tiny-vllm")


@pytest.fixture(scope="module")
def student(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def engine(model_dir, student, tmp_path_factory):
    """Started as a training run starts its engine: vLLM reads only the config, random weights,
    then the student's are synced in."""
    from student_worker.rollouts.vllm_sampling import start_sampler

    with pytest.MonkeyPatch.context() as env:
        # in process, 1 GiB of KV cache, one thread like the test's torch
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
        cfg = load_config(None, None, [f"student.path={model_dir}", "data.source=reverse",
                                       "sampling.engine=vllm"])
        yield start_sampler(cfg, str(model_dir), student, torch.device("cpu"), world=1, step=0, dtype=torch.float32)


@pytest.fixture
def runs_borrow_the_engine(engine, monkeypatch):
    """train() with sampling.engine=vllm takes the module's engine instead of starting its own
    (an engine start costs tens of seconds here); the run's start-up sync still happens."""
    import student_worker.rollouts.vllm_sampling

    def borrowed(cfg, model_dir, model, device, world, step, dtype):
        assert dtype == torch.float32   # what the trainer computes in on a CPU
        engine.load_weights(model, step)
        return engine

    monkeypatch.setattr(student_worker.rollouts.vllm_sampling, "start_sampler", borrowed)
    monkeypatch.setattr(engine, "close", lambda: None)   # the module's, not the run's, to close


def trainer_view(model, completions, temperature, real_vocab=None):
    """The training model's log-probs of the sampled tokens at `temperature` (ids >= real_vocab
    masked), and the sampler's, on the loss's [B, S] grid: what the trainer will compare every
    step."""
    rollout = Rollout(PROMPTS, [c.token_ids for c in completions], "student",
                      sampled_logprobs=[c.logprobs for c in completions])
    batch = token_batch(rollout, PAD)
    trainer_BS = trainer_token_logprobs(model, RealVocabHead(model.get_output_embeddings(), real_vocab),
                                        batch, temperature, chunk_size=16)
    sampler_BS = sampler_logprobs_grid(rollout.sampled_logprobs, rollout.prompt_lens,
                                       batch.mask_BS.shape[1])
    return sampler_BS, trainer_BS, batch.mask_BS


def one_optimizer_step(model) -> torch.nn.Module:
    """A copy of `model` after one AdamW step on next-token loss: weights a trainer would sync."""
    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    ids_BT = torch.randint(4, 512, (4, 24), generator=torch.Generator().manual_seed(0))
    trained(input_ids=ids_BT, labels=ids_BT).loss.backward()
    optimizer.step()
    return trained.eval()


def test_after_a_weight_sync_vllm_logprobs_match_the_trained_model(engine, student):
    engine.load_weights(student)
    trained = one_optimizer_step(student)
    options = dict(max_new_tokens=24, temperature=0.7, eos_ids=[EOS], seed=0)

    stale = trainer_view(trained, engine.sample(PROMPTS, **options), 0.7)
    assert sampler_logprob_diff(*stale)["sampler_logprob_diff_max"] > 0.05  # the sync matters

    syncs = engine.num_syncs
    engine.load_weights(trained)
    assert engine.num_syncs == syncs + 1
    diff = sampler_logprob_diff(*trainer_view(trained, engine.sample(PROMPTS, **options), 0.7))
    assert diff["sampler_logprob_diff_max"] <= 1e-3, diff
    assert diff["sampler_logprob_diff_mean"] <= diff["sampler_logprob_diff_max"]


def test_padded_ids_are_never_drawn_and_carry_no_probability(engine, student):
    """The engine's 512 embedding rows over a pretend tokenizer of 300 ids: 300..511 play the
    padding. The mask (one logit_bias dict, kept) is applied before the log-probs vLLM reports:
    they are those of the distribution renormalised over the real ids."""
    real = 300
    engine.load_weights(student)
    completions = engine.sample(PROMPTS, max_new_tokens=24, temperature=0.7, eos_ids=[EOS], seed=0,
                                real_vocab=real)
    drawn = [t for c in completions for t in c.token_ids]
    assert len(drawn) > 40 and max(drawn) < real
    masked = sampler_logprob_diff(*trainer_view(student, completions, 0.7, real_vocab=real))
    assert masked["sampler_logprob_diff_max"] <= 1e-3, masked
    unmasked = sampler_logprob_diff(*trainer_view(student, completions, 0.7))
    assert unmasked["sampler_logprob_diff_mean"] > 0.05, unmasked   # the padding held real mass
    bias = engine.padded_bias(real)
    assert bias is engine.padded_bias(real) and sorted(bias) == list(range(real, 512))
    assert engine.padded_bias(512) is None and engine.padded_bias(None) is None


def test_the_updates_cached_memory_is_released_before_the_engine_wakes_up(engine, student, monkeypatch):
    """Sleep mode is GPU-only: here the engine is told it can sleep, and its sleep and wake_up
    and torch's empty_cache only record their calls."""
    calls = []
    monkeypatch.setattr(engine, "can_sleep", True)
    monkeypatch.setattr(engine.llm, "sleep", lambda level: calls.append(f"sleep({level})"))
    monkeypatch.setattr(engine.llm, "wake_up", lambda: calls.append("wake_up"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    with engine.updating(student, step=1, sync_every=2):
        calls.append("update")
    assert calls == ["sleep(1)", "update", "empty_cache", "wake_up"]


def test_greedy_gives_the_hf_engines_tokens(engine, student):
    engine.load_weights(student)
    options = dict(max_new_tokens=16, temperature=0.0, eos_ids=[EOS])
    ours = engine.sample(PROMPTS, **options)
    reference = hf_sample(student, PROMPTS, pad_id=PAD, **options)
    for mine, theirs in zip(ours, reference):
        assert mine.token_ids == theirs.token_ids
        assert mine.finished == theirs.finished
        torch.testing.assert_close(mine.logprobs, theirs.logprobs, atol=1e-3, rtol=0)


def test_a_stop_id_ends_the_completion_with_it(engine, student):
    engine.load_weights(student)
    free = engine.sample(PROMPTS[:1], max_new_tokens=12, temperature=0.0, eos_ids=[])[0]
    assert len(free.token_ids) == 12 and not free.finished
    stop = free.token_ids[5]
    first = free.token_ids.index(stop)
    stopped = engine.sample(PROMPTS[:1], max_new_tokens=12, temperature=0.0, eos_ids=[stop])[0]
    assert stopped.token_ids == free.token_ids[:first + 1] and stopped.finished
    assert stopped.logprobs.numel() == first + 1


def test_seeded_sampling_repeats(engine, student):
    engine.load_weights(student)
    options = dict(max_new_tokens=16, temperature=1.0, eos_ids=[EOS])
    first = engine.sample(PROMPTS, seed=7, **options)
    again = engine.sample(PROMPTS, seed=7, **options)
    other = engine.sample(PROMPTS, seed=8, **options)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    # seed + i per prompt: the same prompt twice in one batch gets two different completions
    twice = engine.sample([PROMPTS[0], PROMPTS[0]], seed=7, **options)
    assert twice[0].token_ids != twice[1].token_ids


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_a_lora_student_syncs_its_merged_weights(engine, student):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(student),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter): make it do something
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    base_before = {n: p.clone() for n, p in lora.named_parameters() if "lora_" not in n}
    engine.load_weights(lora)
    completions = engine.sample(PROMPTS, max_new_tokens=16, temperature=1.0, eos_ids=[EOS], seed=0)
    diff = sampler_logprob_diff(*trainer_view(lora, completions, 1.0))
    assert diff["sampler_logprob_diff_max"] <= 1e-3, diff
    for name, param in lora.named_parameters():  # merged on the way out, not in the model
        if name in base_before:
            assert torch.equal(param, base_before[name]), name


def vllm_run(model_dir, teacher, data_file, out, preset, *overrides) -> list[dict]:
    cfg = load_config(None, preset, [
        f"student.path={model_dir}", f"teacher.target={teacher.target}", f"data.source={data_file}",
        "data.batch_size=4", "sampling.max_new_tokens=8", "teacher.top_k=8", "optim.lr=3e-3",
        "sampling.engine=vllm", *overrides])
    train(cfg, out, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_gkd_with_the_vllm_engine_samples_with_the_trained_weights(
        runs_borrow_the_engine, model_dir, teacher, data_file, tmp_path):
    lines = vllm_run(model_dir, teacher, data_file, tmp_path, "gkd", "train.steps=3",
                     "sampling.temperature=0.7")
    assert [x["step"] for x in lines] == [1, 2, 3]
    for x in lines:   # synced at start (vLLM started with random weights) and after every step
        assert x["source"] == "student" and x["sampler_staleness"] == 0
        assert x["sampler_logprob_diff_max"] <= 1e-3, x
        assert x["sampler_logprob_diff_mean"] <= x["sampler_logprob_diff_max"]


def test_syncing_every_second_step_samples_from_stale_weights(
        runs_borrow_the_engine, model_dir, teacher, data_file, tmp_path):
    lines = vllm_run(model_dir, teacher, data_file, tmp_path, "rl-teacher-kl", "train.steps=4",
                     "sampling.sync_every=2", "sampling.tis_cap=2")
    assert [x["sampler_staleness"] for x in lines] == [0, 1, 0, 1]
    fresh, stale = lines[0::2], lines[1::2]
    assert all(x["sampler_logprob_diff_max"] <= 1e-3 for x in fresh), fresh
    assert all(x["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3) for x in fresh)
    # one optimizer step apart: the sampler's policy is visibly another one, and TIS reweights
    assert all(x["sampler_logprob_diff_max"] > 1e-3 for x in stale), stale
    assert all(x["tis_weight_mean"] != pytest.approx(1.0, abs=1e-4) for x in stale)


def test_greedy_student_samples_are_the_same_with_either_engine(engine, student, model_dir, data_file):
    cfg = load_config(None, "gkd", [f"student.path={model_dir}", "teacher.target=unused:1",
                                    f"data.source={data_file}", "data.batch_size=4",
                                    "sampling.temperature=0", "sampling.max_new_tokens=12"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = PromptData(cfg.data, tokenizer).batch(0)
    engine.load_weights(student, step=5)
    rollouts = {}
    for name, sampler in (("hf", None), ("vllm", engine)):
        ctx = Context(cfg, student, tokenizer, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                      task=None, teacher=None, sampler=sampler)
        rollouts[name] = StudentSamples().rollout(examples, ctx, step=0)
    assert rollouts["vllm"].completion_ids == rollouts["hf"].completion_ids
    assert rollouts["vllm"].sampler_weights_step == 5 and rollouts["hf"].sampler_weights_step is None


@pytest.mark.skipif(os.environ.get("DISTILL_VLLM_DDP_TEST") != "1",
                    reason="two vLLM engine starts, 1.5-5 min on 2 cores: DISTILL_VLLM_DDP_TEST=1 runs it")
def test_torchrun_two_workers_each_sample_with_their_own_engine(model_dir, teacher, data_file, tmp_path):
    """One engine per rank, joined to torchrun's process group (external_launcher)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           *worker_cmd(model_dir, teacher.target, data_file, tmp_path, "train.steps=2",
                        "sampling.engine=vllm", "sampling.temperature=0.7")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr   # the engines shut down cleanly too
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in lines] == [4, 4]
    for x in lines:   # rank 0's engine, synced after every step like rank 1's
        assert x["sampler_staleness"] == 0 and x["sampler_logprob_diff_max"] <= 1e-3, x
    digests = torch.load(tmp_path / "checkpoints" / "step-000002" / "trainer_state.pt",
                         weights_only=False)["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]

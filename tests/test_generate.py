"""Generate over gRPC against a real server process, checked against in-process generation and
forwards; plus the pure pieces (stop cutting, log-probs, the batch dispatch) on their own."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import torch

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc
from distill.client.teacher_client import AsyncTeacherClient, TeacherClient
from teacher_server.backends import run_batch
from teacher_server.generation import ChosenLogprobs, GenerateItem, cut_at_stop
from teacher_server.scoring import ScoreItem
from tests.conftest import assert_refused, random_sequences, reference_logprobs

VOCAB, CONTEXT, EOS = 512, 256, 2


def check_logprobs(model, prompt, sample, temperature=1.0, atol=1e-4):
    """The returned log-probs are an in-process forward's log_softmax(logits / T) at the sample."""
    ref = reference_logprobs(model, list(prompt) + sample.token_ids.tolist(), temperature)
    ref = ref[len(prompt) - 1:].gather(-1, sample.token_ids[:, None])[:, 0]
    torch.testing.assert_close(sample.logprobs.double(), ref, atol=atol, rtol=0)


def greedy_reference(model, prompt, max_new_tokens) -> list[int]:
    """Argmax continuation by full forwards, with no stop tokens at all."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_matches_in_process_generate(client, reference_model):
    prompts = random_sequences(3, [3, 17, 40], VOCAB, seed=10)
    results = client.generate(prompts, temperature=0, max_new_tokens=12)
    assert [len(r) for r in results] == [1, 1, 1]
    for prompt, [sample] in zip(prompts, results):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            ref = reference_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=12, eos_token_id=EOS,
                                           pad_token_id=0)[0, len(prompt):]
        assert sample.token_ids.tolist() == ref.tolist()
        if sample.finish_reason == "stop":
            assert sample.token_ids[-1] == EOS and (sample.token_ids[:-1] != EOS).all()
        else:
            assert sample.finish_reason == "length" and len(sample.token_ids) == 12
        check_logprobs(reference_model, prompt, sample)


def test_seeded_sampling_is_reproducible_and_scored(client, reference_model, teacher):
    prompts = random_sequences(2, [5, 11], VOCAB, seed=11)
    kwargs = dict(num_samples=3, temperature=0.8, top_p=0.9, max_new_tokens=10)
    first = client.generate(prompts, seed=123, **kwargs)
    again = client.generate(prompts, seed=123, **kwargs)
    other = client.generate(prompts, seed=124, **kwargs)
    assert [len(r) for r in first] == [3, 3]
    flat = lambda rs: [s.token_ids.tolist() for r in rs for s in r]
    assert flat(first) == flat(again)
    assert flat(first) != flat(other)
    assert len({tuple(t) for t in flat(first)}) > 1, "all samples of a prompt are the same"
    for prompt, samples in zip(prompts, first):
        for sample in samples:
            assert sample.finish_reason in ("stop", "length")
            check_logprobs(reference_model, prompt, sample, temperature=0.8)
    # on the wire: prompt 0's samples, then prompt 1's
    with grpc.insecure_channel(teacher.target) as channel:
        response = pb_grpc.TeacherStub(channel).Generate(pb.GenerateRequest(
            prompt_ids=[pack(np.asarray(p, np.int32)) for p in prompts], num_samples=3,
            max_new_tokens=4, seed=5), timeout=60)
    assert [s.prompt_index for s in response.samples] == [0, 0, 0, 1, 1, 1]


def test_stop_token_ends_the_sample(client, reference_model):
    prompt = random_sequences(1, [9], VOCAB, seed=12)[0]
    ref = greedy_reference(reference_model, prompt, 16)
    absent = next(t for t in range(VOCAB) if t not in ref)
    [[full]] = client.generate([prompt], temperature=0, max_new_tokens=16, stop_token_ids=[absent])
    assert full.token_ids.tolist() == ref and full.finish_reason == "length"
    stop = ref[6]
    [[cut]] = client.generate([prompt], temperature=0, max_new_tokens=16,
                              stop_token_ids=[absent, stop])
    assert cut.token_ids.tolist() == ref[:ref.index(stop) + 1] and cut.finish_reason == "stop"
    torch.testing.assert_close(cut.logprobs, full.logprobs[:len(cut.logprobs)], atol=1e-5, rtol=0)


def test_tiny_top_p_is_greedy(client):
    prompts = random_sequences(2, [6, 20], VOCAB, seed=13)
    greedy = client.generate(prompts, temperature=0, max_new_tokens=10)
    nucleus = client.generate(prompts, temperature=1.0, top_p=1e-6, max_new_tokens=10, num_samples=2)
    for [g], samples in zip(greedy, nucleus):
        for s in samples:
            assert s.token_ids.tolist() == g.token_ids.tolist()
            torch.testing.assert_close(s.logprobs, g.logprobs, atol=1e-5, rtol=0)


def test_async_client_and_float16(teacher, client):
    prompt = random_sequences(1, [8], VOCAB, seed=14)[0]
    blocking = client.generate([prompt], num_samples=2, max_new_tokens=6, seed=7)[0]

    async def main():
        async with AsyncTeacherClient(teacher.target) as aclient:
            return (await aclient.generate([prompt], num_samples=2, max_new_tokens=6, seed=7,
                                           dtype="float16"))[0]

    for b, a in zip(blocking, asyncio.run(main())):
        assert torch.equal(a.token_ids, b.token_ids) and a.finish_reason == b.finish_reason
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-2, rtol=1e-3)


def packed(ids):
    return pack(np.asarray(ids, dtype=np.int32))


def request(**kw):
    return pb.GenerateRequest(**{"prompt_ids": [packed([1, 2, 3])], "max_new_tokens": 4, **kw})


BAD = {
    "no prompts": (pb.GenerateRequest(max_new_tokens=4), "the request has no prompts"),
    "empty prompt": (request(prompt_ids=[packed([])]), "prompt 0: empty sequence"),
    "id out of vocab": (request(prompt_ids=[packed([1]), packed([4, VOCAB])]),
                        f"prompt 1: token id {VOCAB} at position 1 is outside the vocabulary"),
    "malformed tensor": (request(prompt_ids=[pb.Tensor(dtype=pb.DTYPE_INT32, shape=[5], data=b"\0" * 12)]),
                         "12 bytes do not match shape [5]"),
    "negative temperature": (request(temperature=-0.5), "temperature=-0.5 must be a finite number >= 0"),
    "nan temperature": (request(temperature=float("nan")), "temperature=nan"),
    "top_p zero": (request(top_p=0.0), "top_p=0.0 is out of range: it must be in (0, 1]"),
    "top_p above one": (request(top_p=1.5), "top_p=1.5 is out of range"),
    "max_new_tokens zero": (request(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
    "over the context": (request(prompt_ids=[packed(np.ones(250))], max_new_tokens=10),
                         f"prompt 0: 250 prompt tokens + max_new_tokens=10 = 260 exceed the "
                         f"teacher's context of {CONTEXT} tokens"),
    "stop id out of vocab": (request(stop_token_ids=[EOS, VOCAB]),
                             f"stop_token_ids: token id {VOCAB} at position 1 is outside"),
    "too many samples": (request(num_samples=65), "num_samples=65 exceeds the limit of 64"),
    "bad logprob dtype": (request(logprob_dtype=pb.DTYPE_INT32), "logprob_dtype"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_then_good_request(stub, name):
    bad, message = BAD[name]
    assert_refused(stub.Generate, bad, message)
    good = stub.Generate(request(num_samples=2), timeout=30)
    assert len(good.samples) == 2
    assert 1 <= good.samples[0].token_ids.shape[0] <= 4


def test_generate_and_score_concurrently(teacher, reference_model):
    seqs = random_sequences(4, [30, 7, 90, 15], VOCAB, seed=15)
    prompts = random_sequences(4, [4, 12, 25, 8], VOCAB, seed=16)
    with TeacherClient(teacher.target) as one:
        scores_alone = [one.score([s], 1, top_k=8)[0] for s in seqs]
        greedy_alone = [one.generate([p], temperature=0, max_new_tokens=8)[0][0] for p in prompts]

    def score(i):
        with TeacherClient(teacher.target) as own:
            return own.score([seqs[i]], 1, top_k=8)[0]

    def generate(i):
        with TeacherClient(teacher.target) as own:
            return own.generate([prompts[i]], temperature=0, max_new_tokens=8)[0][0]

    with ThreadPoolExecutor(8) as pool:
        scores = [pool.submit(score, i) for i in range(4)]
        greedy = [pool.submit(generate, i) for i in range(4)]
        scores, greedy = [f.result() for f in scores], [f.result() for f in greedy]
    for a, t in zip(scores_alone, scores):
        assert torch.equal(a.topk_ids, t.topk_ids)
        torch.testing.assert_close(t.topk_logprobs, a.topk_logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.token_logprobs, a.token_logprobs, atol=1e-5, rtol=0)
    for a, t in zip(greedy_alone, greedy):
        assert torch.equal(a.token_ids, t.token_ids)
        torch.testing.assert_close(t.logprobs, a.logprobs, atol=1e-4, rtol=0)
    metrics = httpx.get(f"{teacher.http}/metrics").text
    assert 'teacher_requests_total{code="OK",rpc="Generate",tenant="open"}' in metrics
    generated = next(line for line in metrics.splitlines()
                     if line.startswith("teacher_tokens_generated_total"))
    assert float(generated.split()[-1]) > 0


# The pure pieces, no server.

def test_cut_at_stop_keeps_the_first_stop_token():
    tokens, logprobs = torch.tensor([5, 7, 2, 7, 2]), -torch.arange(5.0)
    cut = cut_at_stop(tokens, logprobs, [2, 9])
    assert cut.token_ids.tolist() == [5, 7, 2] and cut.logprobs.tolist() == [0, -1, -2]
    assert cut.finish_reason == "stop"
    assert cut_at_stop(tokens, logprobs, []).finish_reason == "length"
    assert cut_at_stop(tokens, logprobs, [3]).token_ids.tolist() == tokens.tolist()


def test_chosen_logprobs_apply_temperature_and_score_greedy_at_one():
    logits_BLV = torch.randn(3, 4, 11, dtype=torch.float64)
    tokens_BL = torch.randint(0, 11, (3, 4))
    prompt_B2 = torch.zeros(3, 2, dtype=torch.long)
    for t, scale in ((0.5, 0.5), (0.0, 1.0)):
        chosen = ChosenLogprobs(t)
        for i in range(4):   # as generate calls it: the ids so far, then this step's logits
            ids_BL = torch.cat([prompt_B2, tokens_BL[:, :i]], dim=1)
            step_BV = logits_BLV[:, i]
            assert chosen(ids_BL, step_BV) is step_BV      # the scores pass through unchanged
        ref = torch.log_softmax(logits_BLV / scale, -1).gather(-1, tokens_BL[..., None])[..., 0]
        torch.testing.assert_close(chosen.finish(tokens_BL).double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (0.7, 0.9), (1.0, 1.0)])
def test_backend_generate_equals_generate_with_all_logits_kept(tiny_model_dir, temperature, top_p):
    """The recorder gives the same tokens and log-probs as `generate(output_logits=True)` (the
    way that kept every step's logits) for a seed, including top-p truncated sampling."""
    from teacher_server.backends.hf import TransformersBackend
    from teacher_server.config import ServerSettings

    backend = TransformersBackend.from_settings(ServerSettings(model=str(tiny_model_dir), device="cpu"))
    prompts = [torch.tensor(p) for p in random_sequences(3, [4, 9, 15], VOCAB, seed=12)]
    item = GenerateItem(prompts, 2, temperature, top_p, 10, [EOS], seed=5)
    [got] = backend.generate([item])
    width = max(p.numel() for p in prompts)
    rows = [p for p in prompts for _ in range(2)]
    ids_BP = torch.stack([torch.cat([torch.zeros(width - p.numel(), dtype=torch.long), p]) for p in rows])
    options = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature
               else dict(do_sample=False))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(5)
        out = backend.model.generate(ids_BP, attention_mask=(torch.arange(width) >= width - torch.tensor(
            [p.numel() for p in rows])[:, None]).long(), max_new_tokens=10, eos_token_id=[EOS],
            pad_token_id=0, return_dict_in_generate=True, output_logits=True, **options)
    new_BL = out.sequences[:, width:]
    ref_BL = torch.stack([torch.log_softmax(l.float() / (temperature or 1.0), -1).gather(
        -1, new_BL[:, i, None])[:, 0] for i, l in enumerate(out.logits)], dim=1)
    for row, sample in enumerate(s for per_prompt in got for s in per_prompt):
        n = sample.token_ids.numel()
        assert sample.token_ids.tolist() == new_BL[row, :n].tolist()
        torch.testing.assert_close(sample.logprobs, ref_BL[row, :n], atol=1e-6, rtol=0)


def test_run_batch_sends_each_kind_to_its_method_in_order():
    class Fake:
        def score(self, items):
            return [("score", item.score_from) for item in items]

        def generate(self, items):
            return [("generate", item.num_samples) for item in items]

    gen = lambda n: GenerateItem([torch.tensor([1, 2])], n, 1.0, 1.0, 4, [], None)
    score = lambda start: ScoreItem.one(torch.tensor([1, 2, 3]), start, 1)
    items = [gen(1), score(1), gen(2), score(2)]
    assert run_batch(Fake(), items) == [("generate", 1), ("score", 1), ("generate", 2), ("score", 2)]
    assert gen(3).num_tokens == (2 + 4) * 3

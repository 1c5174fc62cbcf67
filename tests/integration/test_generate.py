"""Generate over gRPC against a real server process, checked against in-process generation and
forwards (the pure pieces: tests/unit/test_generate.py)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import torch

from distill.client.teacher_client import AsyncTeacherClient, TeacherClient
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc
from tests.helpers import assert_refused, check_logprobs, greedy_reference, random_sequences
from tests.helpers.bad_requests import EOS, GENERATE_BAD, VOCAB, generate_request


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


@pytest.mark.parametrize("name", list(GENERATE_BAD))
def test_bad_input_then_good_request(stub, name):
    bad, message = GENERATE_BAD[name]
    assert_refused(stub.Generate, bad, message)
    good = stub.Generate(generate_request(num_samples=2), timeout=30)
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

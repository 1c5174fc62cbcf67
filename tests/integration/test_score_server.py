"""Score and Info over gRPC against a real server process, checked against in-process forwards."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import AutoTokenizer

from distill.fingerprint import tokenizer_fingerprint
from distill.client.teacher_client import AsyncTeacherClient, TeacherClient
from tests.helpers import check_against_reference, random_sequences, reference_logprobs

VOCAB = 512


def test_score_matches_in_process_forward(client, reference_model):
    seqs = random_sequences(5, [17, 40, 9, 64, 2], VOCAB, seed=1)
    starts = [5, 1, 3, 60, 1]
    results = client.score(seqs, starts, top_k=16)
    assert len(results) == 5
    for seq, start, scores in zip(seqs, starts, results):
        check_against_reference(reference_model, seq, start, scores, 16)
    # the same answer kept whole: every sequence's rows one after another
    whole = client.score_packed(seqs, starts, top_k=16)
    for name in ("topk_ids", "topk_logprobs", "token_logprobs", "tail_logprobs"):
        torch.testing.assert_close(getattr(whole, name), torch.cat([getattr(r, name) for r in results]))


def test_temperature_and_candidates(client, reference_model):
    seq = random_sequences(1, [30], VOCAB, seed=2)[0]
    g = torch.Generator().manual_seed(3)
    cands = torch.randint(0, VOCAB, (30 - 4, 7), generator=g)
    scores = client.score([seq], 4, top_k=5, temperature=0.5, candidates=[cands])[0]
    check_against_reference(reference_model, seq, 4, scores, 5, temperature=0.5)
    ref = reference_logprobs(reference_model, seq, 0.5)[3:]
    torch.testing.assert_close(scores.candidate_logprobs.double(), ref.gather(-1, cands),
                               atol=1e-5, rtol=0)


def test_samples_of_one_prompt_share_its_start_and_answer_as_alone(teacher, client, reference_model):
    """Six samples of a 150-token prompt and two unrelated sequences in one request: the prompt
    runs once (the saving is counted on /metrics), and every answer is the in-process forward's,
    scored from inside the shared start too, with a temperature and candidates."""
    from tests.helpers.servers import metric_families

    def saved() -> float:
        return sum(s.value for s in metric_families(teacher)["teacher_shared_prefix_tokens"].samples
                   if s.name == "teacher_shared_prefix_tokens_total")

    prompt = random_sequences(1, [150], VOCAB, seed=4)[0]
    answers = random_sequences(6, [1, 12, 30, 7, 50, 3], VOCAB, seed=5)
    seqs = [prompt + a for a in answers] + random_sequences(2, [90, 20], VOCAB, seed=6)
    starts = [150, 140, 100, 151, 5, 150, 1, 10]
    g = torch.Generator().manual_seed(7)
    cands = [torch.randint(0, VOCAB, (len(s) - f, 3), generator=g) for s, f in zip(seqs, starts)]
    before = saved()
    results = client.score(seqs, starts, top_k=6, temperature=0.7, candidates=cands)
    # the six share the prompt minus its last token (one of them ends one token after it)
    assert saved() - before == 150 * 5
    for seq, start, c, scores in zip(seqs, starts, cands, results):
        check_against_reference(reference_model, seq, start, scores, 6, temperature=0.7)
        ref = reference_logprobs(reference_model, seq, 0.7)[start - 1:]
        torch.testing.assert_close(scores.candidate_logprobs.double(), ref.gather(-1, c), atol=1e-5, rtol=0)


def test_full_vocabulary_top_k_has_no_tail(client):
    scores = client.score(random_sequences(1, [6], VOCAB), 1, top_k=VOCAB)[0]
    assert scores.topk_ids.shape == (5, VOCAB)
    assert torch.isneginf(scores.tail_logprobs).all()
    assert torch.equal(scores.topk_ids.sort(-1).values, torch.arange(VOCAB).expand(5, VOCAB))


def test_float16_logprobs(client):
    seq = random_sequences(1, [20], VOCAB, seed=4)[0]
    full = client.score([seq], 2, top_k=8)[0]
    half = client.score([seq], 2, top_k=8, dtype="float16")[0]
    assert torch.equal(full.topk_ids, half.topk_ids)
    torch.testing.assert_close(half.topk_logprobs, full.topk_logprobs, atol=1e-2, rtol=1e-3)


def test_sixteen_concurrent_clients_get_what_they_get_alone(teacher, reference_model):
    lengths = [3, 200, 17, 64, 5, 128, 33, 90, 2, 150, 11, 48, 77, 8, 180, 25]
    seqs = random_sequences(16, lengths, VOCAB, seed=5)
    with TeacherClient(teacher.target) as one:
        alone = [one.score([s], 1, top_k=10)[0] for s in seqs]

    def ask(i):
        with TeacherClient(teacher.target) as own:
            return own.score([seqs[i]], 1, top_k=10)[0]

    before = _histogram_count_above_one(teacher)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(16)))
    for seq, a, t in zip(seqs, alone, together):
        assert torch.equal(a.topk_ids, t.topk_ids)
        torch.testing.assert_close(t.topk_logprobs, a.topk_logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.tail_logprobs, a.tail_logprobs, atol=1e-5, rtol=1e-5)
        check_against_reference(reference_model, seq, 1, t, 10)
    assert _histogram_count_above_one(teacher) > before, "no forward pass merged two requests"


def _histogram_count_above_one(teacher) -> float:
    """Forward passes that held more than one sequence, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{teacher.http}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "teacher_batch_sequences":
            buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
            return buckets["+Inf"] - buckets["1.0"]
    raise AssertionError("teacher_batch_sequences missing from /metrics")


def test_async_client(teacher, reference_model):
    seqs = random_sequences(3, [12, 30, 7], VOCAB, seed=6)

    async def main():
        async with AsyncTeacherClient(teacher.target) as aclient:
            info = await aclient.info()
            results = await asyncio.gather(*(aclient.score([s], 2, top_k=4) for s in seqs))
            return info, [r[0] for r in results]

    info, results = asyncio.run(main())
    assert info.vocab_size == VOCAB
    for seq, scores in zip(seqs, results):
        check_against_reference(reference_model, seq, 2, scores, 4)


def test_info(client, tiny_model_dir, reference_model):
    info = client.info()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert info.model_id == str(tiny_model_dir)
    assert info.backend == "transformers"
    assert info.vocab_size == VOCAB
    assert info.tokenizer_size == len(tokenizer)
    assert info.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer)
    assert info.special_tokens.eos == tokenizer.eos_token_id
    assert info.special_tokens.pad == tokenizer.pad_token_id
    assert list(info.special_tokens.eos_ids) == [tokenizer.eos_token_id]
    assert info.max_context == reference_model.config.max_position_embeddings
    assert info.max_top_k == VOCAB
    assert info.max_message_bytes == 4 * 1024 * 1024
    assert info.features.score_candidates and info.features.float16_logprobs
    assert info.features.generate and info.features.verify
    assert info.features.score_temperature and info.features.verify_speculative
    assert info.features.generate_temperature
    assert info.max_draft_tokens == 16
    assert info.model_dtype == "float32"


def test_several_targets_round_robin(tiny_model_dir):
    """Two servers behind one client target: both serve, both answer identically."""
    from teacher_server.process import TeacherProcess
    import httpx

    servers = [TeacherProcess(tiny_model_dir) for _ in range(2)]
    try:
        for s in servers:
            s.wait_serving()
        seq = random_sequences(1, [20], VOCAB, seed=7)[0]
        with TeacherClient(",".join(s.target for s in servers)) as both:
            answers = [both.score([seq], 1, top_k=3)[0] for _ in range(6)]
        for a in answers[1:]:
            assert torch.equal(a.topk_ids, answers[0].topk_ids)
        for s in servers:
            metrics = httpx.get(f"{s.http}/metrics").text
            assert 'teacher_requests_total{code="OK",rpc="Score",tenant="open"}' in metrics, "a replica got nothing"
    finally:
        for s in servers:
            assert s.terminate() == 0


def test_device_map_auto_loads_and_scores_identically(tiny_model_dir, client):
    """--device-map auto (accelerate's placement; on this CPU-only machine all on the CPU)
    serves the same Score and greedy Generate answers as the default single-device load."""
    from teacher_server.process import TeacherProcess

    server = TeacherProcess(tiny_model_dir, "--device-map", "auto")
    try:
        server.wait_serving()
        seqs = random_sequences(3, [17, 40, 9], VOCAB, seed=8)
        with TeacherClient(server.target) as mapped:
            got = mapped.score(seqs, [2, 1, 3], top_k=8)
            greedy = mapped.generate(seqs[:2], temperature=0, max_new_tokens=6)
        want = client.score(seqs, [2, 1, 3], top_k=8)
        for a, b in zip(got, want):
            assert torch.equal(a.topk_ids, b.topk_ids)
            for name in ("topk_logprobs", "token_logprobs", "tail_logprobs"):
                torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0)
        for [a], [b] in zip(greedy, client.generate(seqs[:2], temperature=0, max_new_tokens=6)):
            assert torch.equal(a.token_ids, b.token_ids)
        assert "device_map=auto" in server.log()
    finally:
        assert server.terminate() == 0, server.log()

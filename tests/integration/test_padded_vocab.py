"""Padded vocabularies through the real server: a teacher and a student sharing one tokenizer with
different embedding sizes train both ways round, and the served teacher never scores or draws a
padded id (the pieces alone: tests/unit/test_padded_vocab.py)."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from student_worker.config import load_config
from student_worker.train.trainer import train
from tests.helpers import TeacherProcess

EXAMPLES = [{"prompt": "rev abc="}, {"prompt": "rev hello="}, {"prompt": "rev xy="}, {"prompt": "rev pq="}]


@pytest.mark.parametrize("teacher_vocab, student_vocab", [(640, 384), (384, 640)])
def test_train_across_padded_vocabularies(padded_models, tmp_path, teacher_vocab, student_vocab):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    server = TeacherProcess(padded_models[teacher_vocab])
    try:
        server.wait_serving()
        cfg = load_config(None, "gkd", [
            f"student.path={padded_models[student_vocab]}", f"teacher.target={server.target}",
            f"data.source={data}", "data.batch_size=4", "sampling.max_new_tokens=8",
            "teacher.top_k=8", "train.steps=3", "train.eval_every=0"])
        train(cfg, tmp_path / "run", progress=False)
    finally:
        server.terminate()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(math.isfinite(x["loss"]) for x in lines)


def test_served_teacher_never_scores_or_draws_padded_ids(padded_models):
    """Through the real server on a padded teacher: Score's top-k and normaliser, Generate's
    draws and Verify's probabilities all stay within the tokenizer's real ids."""
    from distill.client.teacher_client import TeacherClient

    path = padded_models[640]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    real = len(tokenizer)
    ids = tokenizer("rev hello=olleh").input_ids
    server = TeacherProcess(path)
    try:
        server.wait_serving()
        with TeacherClient(server.target, timeout=60) as client:
            assert client.info().tokenizer_size == real < client.info().vocab_size == 640
            [scores] = client.score([ids], [1], top_k=64)
            samples = client.generate([ids[:4]] * 4, temperature=1.0, max_new_tokens=24, seed=3)
            q_GR = torch.full((2, real), 1.0 / real)      # full rows over the real vocabulary
            [verdict] = client.verify([ids[:4]], [ids[4:6]], draft_probs=[q_GR], seed=0)
    finally:
        server.terminate()
    assert int(scores.topk_ids.max()) < real
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1, :real].double()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(scores.token_logprobs.double(), expected, atol=1e-4)
    drawn = torch.cat([s.token_ids for per_prompt in samples for s in per_prompt])
    assert drawn.numel() > 0 and int(drawn.max()) < real
    assert 0 <= verdict.num_accepted <= 2 and verdict.next_token < real

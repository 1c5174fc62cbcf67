"""Score's text form: sequences as text, rendered and tokenized by the teacher (ScoreRequest.text).

A caller whose tokenizer is not the teacher's cannot send token ids the teacher understands; it
sends the prompt (chat messages or plain text) and the completion as text. The teacher renders
the messages with its own chat template, tokenizes the completion on its own, and scores every
completion token (and its end of turn, when asked). The answer adds, per row, the teacher's token
and its character span in the completion, which is all a caller needs to align the teacher's
tokens with its own (student_worker's cross-tokenizer alignment).

Text inside a completion that looks like a special token ("<|im_end|>") is text: it is split like
any other, never read as a control token, so no one can end a turn or inject a role by writing it.
"""

from __future__ import annotations

import numpy as np

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from teacher_server.errors import InvalidRequest


def end_of_turn_id(tokenizer, eos_ids: list[int]) -> int:
    """The token the chat template closes an assistant answer with (a special token right after
    the answer's text), else the first end-of-sequence id."""
    fallback = eos_ids[0] if eos_ids else tokenizer.eos_token_id
    if not tokenizer.chat_template:
        return fallback
    marker = "Zq9"   # an answer text no template rewrites
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:   # a template that cannot render this pair: keep the end-of-sequence id
        return fallback
    after = text[text.rfind(marker) + len(marker):] if marker in text else ""
    ids = tokenizer(after.lstrip(" "), add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(eos_ids)
    return ids[0] if ids and ids[0] in special else fallback


class TextCodec:
    """The teacher's tokenizer and chat template, for the text forms of Score and Generate."""

    def __init__(self, tokenizer, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn_id(tokenizer, eos_ids)

    def prompt_ids(self, seq: pb.TextSequence, where: str) -> list[int]:
        if bool(seq.messages) == bool(seq.prompt):
            raise InvalidRequest(f"{where}: send the prompt as `messages` or as `prompt`, one of the two")
        if seq.prompt:
            return self.tokenizer(seq.prompt)["input_ids"]
        if not self.tokenizer.chat_template:
            raise InvalidRequest(f"{where}: the teacher's tokenizer has no chat template to render `messages` "
                                 f"with; send the prompt as plain text in `prompt`")
        messages = [{"role": m.role, "content": m.content} for m in seq.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:   # the template's own checks (roles, order) raise from Jinja
            raise InvalidRequest(f"{where}: the teacher's chat template cannot render these messages: {exc}") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def completion(self, seq: pb.TextSequence, where: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The completion's tokens (plus the end of turn when asked) and their character spans."""
        if not seq.completion and not seq.end_of_turn:
            raise InvalidRequest(f"{where}: the completion is empty; send text to score, or set end_of_turn")
        ids, spans = [], []
        if seq.completion:
            encoded = self.tokenizer(seq.completion, add_special_tokens=False, return_offsets_mapping=True,
                                     split_special_tokens=True)
            ids, spans = list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
            back = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if back != seq.completion:
                at = next((i for i, (a, b) in enumerate(zip(back, seq.completion)) if a != b),
                          min(len(back), len(seq.completion)))
                raise InvalidRequest(
                    f"{where}: the teacher's tokenizer does not give back the completion (it reads "
                    f"{seq.completion[at:at + 12]!r} at character {at} as {back[at:at + 12]!r}: it normalises "
                    f"that text); send text it keeps as is")
            covered = spans[-1][1] if spans else 0
            if covered != len(seq.completion):
                raise InvalidRequest(f"{where}: the teacher's tokens cover {covered} of the completion's "
                                     f"{len(seq.completion)} characters; send text it keeps as is")
        if seq.end_of_turn:
            ids.append(self.end_of_turn)
            spans.append((len(seq.completion), len(seq.completion)))
        return ids, spans

    def packed(self, sequences, limits) -> tuple[pb.PackedScoreSequences, np.ndarray, np.ndarray]:
        """The text sequences as packed token sequences scored from their completions, and every
        scored row's token id [R] and character span [R, 2]."""
        ids, lengths, starts, rows, spans = [], [], [], [], []
        for i, seq in enumerate(sequences):
            where = f"text sequence {i}"
            prompt = self.prompt_ids(seq, where)
            if not prompt:
                raise InvalidRequest(f"{where}: the prompt is empty (the first scored token needs context)")
            answer, answer_spans = self.completion(seq, where)
            ids += prompt + answer
            lengths.append(len(prompt) + len(answer))
            starts.append(len(prompt))
            rows += answer
            spans += answer_spans
        packed = pb.PackedScoreSequences()
        pack(np.asarray(ids, np.int32), into=packed.token_ids)
        pack(np.asarray(lengths, np.int32), into=packed.lengths)
        pack(np.asarray(starts, np.int32), into=packed.score_from)
        return packed, np.asarray(rows, np.int32), np.asarray(spans, np.int32).reshape(-1, 2)

    def text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

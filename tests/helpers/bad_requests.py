"""Malformed requests and what the server answers, per rpc: {name: (request, [code,] message)}.
The transformers backend's suites (tests/integration/test_bad_input.py, test_generate.py,
test_verify.py) send every one; the vLLM backend's (tests/e2e/test_vllm_backend.py) sends those it
answers the same way. The tiny teacher's sizes: VOCAB ids, a CONTEXT of tokens."""

import numpy as np

from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb

VOCAB, CONTEXT, EOS = 512, 256, 2


def ids(values):
    return pack(np.asarray(values, dtype=np.int32))


def probs(array):
    return pack(np.asarray(array, dtype=np.float32))


# ---- Score: (request, code, message)

OK_SEQ = ids(np.arange(10))


def score_seq(values, score_from=1, **kw):
    return pb.ScoreSequence(token_ids=ids(values), score_from=score_from, **kw)


SCORE_BAD = {
    "id below zero": (pb.ScoreRequest(sequences=[score_seq([1, 2, -3])]),
                      "INVALID_ARGUMENT", "sequence 0: token id -3 at position 2 is outside the vocabulary"),
    "id above vocab": (pb.ScoreRequest(sequences=[score_seq([1, 2]), score_seq([4, 5, VOCAB])]),
                       "INVALID_ARGUMENT", f"sequence 1: token id {VOCAB} at position 2"),
    "empty sequence": (pb.ScoreRequest(sequences=[score_seq([], 0)]), "INVALID_ARGUMENT", "empty sequence"),
    "no sequences": (pb.ScoreRequest(), "INVALID_ARGUMENT", "no sequences"),
    "score_from zero": (pb.ScoreRequest(sequences=[score_seq([1, 2, 3], 0)]),
                        "INVALID_ARGUMENT", "score_from=0 is out of range for 3 tokens"),
    "score_from past end": (pb.ScoreRequest(sequences=[score_seq([1, 2, 3], 3)]),
                            "INVALID_ARGUMENT", "between 1 and 2"),
    "top_k zero": (pb.ScoreRequest(sequences=[score_seq([1, 2])], top_k=0), "INVALID_ARGUMENT", "top_k=0"),
    "top_k above vocab": (pb.ScoreRequest(sequences=[score_seq([1, 2])], top_k=VOCAB + 1),
                          "INVALID_ARGUMENT", f"between 1 and {VOCAB}"),
    "temperature zero": (pb.ScoreRequest(sequences=[score_seq([1, 2])], temperature=0.0),
                         "INVALID_ARGUMENT", "temperature=0.0 must be a finite number > 0"),
    "temperature nan": (pb.ScoreRequest(sequences=[score_seq([1, 2])], temperature=float("nan")),
                        "INVALID_ARGUMENT", "temperature=nan"),
    "temperature inf": (pb.ScoreRequest(sequences=[score_seq([1, 2])], temperature=float("inf")),
                        "INVALID_ARGUMENT", "temperature=inf"),
    "temperature tiny": (pb.ScoreRequest(sequences=[score_seq([1, 2])], temperature=1e-40),   # logits overflow
                         "INVALID_ARGUMENT", "at least 0.001"),
    "too long": (pb.ScoreRequest(sequences=[score_seq(np.ones(CONTEXT + 1))]),
                 "INVALID_ARGUMENT", f"{CONTEXT + 1} tokens exceed the teacher's context of {CONTEXT}"),
    "unknown dtype": (pb.ScoreRequest(sequences=[score_seq([1, 2])], logprob_dtype=7),
                      "INVALID_ARGUMENT", "logprob_dtype 7"),
    "int dtype for logprobs": (pb.ScoreRequest(sequences=[score_seq([1, 2])], logprob_dtype=pb.DTYPE_INT32),
                               "INVALID_ARGUMENT", "logprob_dtype"),
    "bytes do not match shape": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(
            token_ids=pb.Tensor(dtype=pb.DTYPE_INT32, shape=[5], data=b"\0" * 12), score_from=1)]),
        "INVALID_ARGUMENT", "12 bytes do not match shape [5]"),
    "float token ids": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=pack(np.ones(3, np.float32)), score_from=1)]),
        "INVALID_ARGUMENT", "token_ids must be DTYPE_INT32 of shape [T]"),
    "2-D token ids": (
        pb.ScoreRequest(sequences=[pb.ScoreSequence(token_ids=pack(np.ones((2, 3), np.int32)), score_from=1)]),
        "INVALID_ARGUMENT", "token_ids must be DTYPE_INT32 of shape [T]"),
    "candidates wrong rows": (
        pb.ScoreRequest(sequences=[score_seq([1, 2, 3], 1, candidate_ids=pack(np.zeros((3, 2), np.int32)))]),
        "INVALID_ARGUMENT", "candidate_ids must be DTYPE_INT32 of shape [2, C]"),
    "candidate out of vocab": (
        pb.ScoreRequest(sequences=[score_seq([1, 2, 3], 1, candidate_ids=pack(np.full((2, 2), VOCAB, np.int32)))]),
        "INVALID_ARGUMENT", "candidate_ids: token id 512 at position [0, 0]"),
    "over the message limit": (
        pb.ScoreRequest(sequences=[score_seq(np.ones(5 * 1024 * 1024 // 4))]),
        "RESOURCE_EXHAUSTED", ""),
}


# ---- Generate: (request, message), refused with INVALID_ARGUMENT

def generate_request(**kw):
    return pb.GenerateRequest(**{"prompt_ids": [ids([1, 2, 3])], "max_new_tokens": 4, **kw})


GENERATE_BAD = {
    "no prompts": (pb.GenerateRequest(max_new_tokens=4), "the request has no prompts"),
    "empty prompt": (generate_request(prompt_ids=[ids([])]), "prompt 0: empty sequence"),
    "id out of vocab": (generate_request(prompt_ids=[ids([1]), ids([4, VOCAB])]),
                        f"prompt 1: token id {VOCAB} at position 1 is outside the vocabulary"),
    "malformed tensor": (generate_request(prompt_ids=[pb.Tensor(dtype=pb.DTYPE_INT32, shape=[5], data=b"\0" * 12)]),
                         "12 bytes do not match shape [5]"),
    "negative temperature": (generate_request(temperature=-0.5), "temperature=-0.5 must be a finite number >= 0"),
    "nan temperature": (generate_request(temperature=float("nan")), "temperature=nan"),
    "top_p zero": (generate_request(top_p=0.0), "top_p=0.0 is out of range: it must be in (0, 1]"),
    "top_p above one": (generate_request(top_p=1.5), "top_p=1.5 is out of range"),
    "max_new_tokens zero": (generate_request(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
    "over the context": (generate_request(prompt_ids=[ids(np.ones(250))], max_new_tokens=10),
                         f"prompt 0: 250 prompt tokens + max_new_tokens=10 = 260 exceed the "
                         f"teacher's context of {CONTEXT} tokens"),
    "stop id out of vocab": (generate_request(stop_token_ids=[EOS, VOCAB]),
                             f"stop_token_ids: token id {VOCAB} at position 1 is outside"),
    "too many samples": (generate_request(num_samples=65), "num_samples=65 exceeds the limit of 64"),
    "bad logprob dtype": (generate_request(logprob_dtype=pb.DTYPE_INT32), "logprob_dtype"),
}


# ---- Verify: (request, message), refused with INVALID_ARGUMENT

UNIFORM = np.full((2, VOCAB), 1 / VOCAB)


def vseq(prefix=(1, 2, 3), draft=(4, 5), **kw):
    return pb.VerifySequence(prefix_ids=ids(prefix), draft_ids=ids(draft), **kw)


def vreq(*seqs, **kw):
    return pb.VerifyRequest(**{"sequences": list(seqs) or [vseq()], "mode": pb.VERIFY_MODE_GREEDY, **kw})


def spec(*seqs, **kw):
    return vreq(*seqs, mode=pb.VERIFY_MODE_SPECULATIVE, **kw)


def with_row(value, row=1, col=0):
    array = UNIFORM.copy()
    array[row, col] = value
    return probs(array)


TOPK_IDS = ids([[3, 7, 9, 11], [1, 2, 5, 8]])


VERIFY_BAD = {
    "no sequences": (pb.VerifyRequest(mode=pb.VERIFY_MODE_GREEDY), "the request has no sequences"),
    "mode unset": (vreq(mode=pb.VERIFY_MODE_UNSPECIFIED), "mode is not set"),
    "mode unknown": (vreq(mode=9), "mode 9 is unknown"),
    "empty prefix": (vreq(vseq(prefix=[])), "sequence 0 prefix_ids: empty sequence"),
    "prefix out of vocab": (vreq(vseq(), vseq(prefix=[1, VOCAB])),
                            f"sequence 1 prefix_ids: token id {VOCAB} at position 1 is outside"),
    "empty draft": (vreq(vseq(draft=[])), "sequence 0: the draft is empty (γ = 0)"),
    "no draft": (vreq(pb.VerifySequence(prefix_ids=ids([1, 2]))), "γ = 0"),
    "draft too long": (vreq(vseq(draft=[4] * 17)),
                       "17 draft tokens exceed the teacher's max_draft_tokens=16"),
    "draft out of vocab": (vreq(vseq(), vseq(draft=[4, -1])),
                           "sequence 1 draft_ids: token id -1 at position 1 is outside"),
    "draft 2-D": (vreq(vseq(draft=[[4, 5]])), "draft_ids must be DTYPE_INT32 of shape [T]"),
    "over the context": (vreq(vseq(prefix=[1] * 250, draft=[4] * 6)),
                         f"250 prefix tokens + 6 draft tokens + 1 = 257 exceed the teacher's "
                         f"context of {CONTEXT} tokens"),
    "probs missing": (spec(vseq()), "sequence 0: draft_probs is required in VERIFY_MODE_SPECULATIVE"),
    "probs float16": (spec(vseq(draft_probs=pack(UNIFORM.astype(np.float16)))),
                      f"draft_probs must be DTYPE_FLOAT32 of shape [2, {VOCAB}]"),
    "probs too narrow": (spec(vseq(draft_probs=probs(UNIFORM[:, 1:]))),
                         f"got DTYPE_FLOAT32 [2, {VOCAB - 1}]"),
    "probs rows not G": (spec(vseq(draft_probs=probs(UNIFORM[:1]))), f"shape [2, {VOCAB}]"),
    "probs malformed": (spec(vseq(draft_probs=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, VOCAB]))),
                        "0 bytes do not match shape"),
    "probs negative": (spec(vseq(draft_probs=with_row(-0.01))),
                       "draft_probs[1, 0] = -0.01 is not a probability"),
    "probs nan": (spec(vseq(draft_probs=with_row(np.nan))), "draft_probs[1, 0] = nan"),
    "probs inf": (spec(vseq(draft_probs=with_row(np.inf))), "draft_probs[1, 0] = inf"),
    "probs do not sum to 1": (spec(vseq(draft_probs=probs(UNIFORM * [[1], [0.9]]))),
                              "draft_probs row 1 sums to 0.9; rows must sum to 1 (within 0.001)"),
    "top-k probs wrong shape": (spec(vseq(draft_probs=probs(np.full((2, 3), 0.1)),
                                          draft_topk_ids=TOPK_IDS)),
                                "draft_probs must be DTYPE_FLOAT32 of shape [2, 4]"),
    "top-k ids wrong rows": (spec(vseq(draft_probs=probs(np.full((3, 4), 0.1)),
                                       draft_topk_ids=ids(np.ones((3, 4))))),
                             "draft_topk_ids must be DTYPE_INT32 of shape [2, k]"),
    "top-k ids float": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                  draft_topk_ids=probs(np.ones((2, 4))))),
                        "draft_topk_ids must be DTYPE_INT32"),
    "top-k id out of vocab": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                        draft_topk_ids=ids([[3, 7, 9, 11], [1, 2, VOCAB, 8]]))),
                              f"draft_topk_ids: token id {VOCAB} at position [1, 2]"),
    "top-k id repeated": (spec(vseq(draft_probs=probs(np.full((2, 4), 0.1)),
                                    draft_topk_ids=ids([[3, 7, 9, 11], [1, 5, 5, 8]]))),
                          "draft_topk_ids row 1 repeats token id 5"),
    "top-k probs over 1": (spec(vseq(draft_probs=probs([[0.1] * 4, [0.4] * 4]),
                                     draft_topk_ids=TOPK_IDS)),
                           "draft_probs row 1 sums to 1.6; rows must sum to at most 1"),
    "top-k probs negative": (spec(vseq(draft_probs=probs([[0.1] * 4, [0.1, -0.1, 0.1, 0.1]]),
                                       draft_topk_ids=TOPK_IDS)),
                             "draft_probs[1, 1] = -0.1"),
    "accept_top_k unset": (vreq(mode=pb.VERIFY_MODE_TOPK),
                           "accept_top_k=0 is out of range for VERIFY_MODE_TOPK"),
    "accept_top_k above vocab": (vreq(mode=pb.VERIFY_MODE_TOPK, accept_top_k=VOCAB + 1),
                                 f"between 1 and {VOCAB}"),
    "temperature zero": (vreq(temperature=0.0), "temperature=0.0 must be a finite number > 0"),
    "temperature nan": (vreq(temperature=float("nan")), "temperature=nan"),
    "top_k zero": (vreq(top_k=0), "top_k=0 is out of range"),
    "top_k above vocab": (vreq(top_k=VOCAB + 1), f"top_k={VOCAB + 1} is out of range"),
    "logprob dtype": (vreq(logprob_dtype=pb.DTYPE_INT32), "logprob_dtype"),
}

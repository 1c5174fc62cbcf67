"""distill.v1 messages <-> validated work items and back. Every check of user input lives here:
the per-request caps (the server's and the calling tenant's), what the backend serves, and each
field. `parse_*(request, limits)` returns a `Parsed`: the items for the batcher and how to answer
with their outputs. Messages name the sequence (and position) at fault, so a person can fix the
request.

    request   Limits, Parsed, the caps on a request's size, fields several rpcs share
    arrays    a field's dtype and shape checked by rule; token ids against the vocabulary
    score     Score (packed; the deprecated per-sequence form is converted to it at the edge)
    verify    Verify (speculative, top-k and greedy accept/reject)
    generate  Generate
    info      Info
"""

from teacher_server.protocol.generate import MAX_SAMPLES, parse_generate_request
from teacher_server.protocol.info import info_response
from teacher_server.protocol.request import (DEFAULT_TOP_K, MIN_TEMPERATURE, Limits, Parsed, limits_for,
                                             logprob_dtype)
from teacher_server.protocol.score import parse_score_request
from teacher_server.protocol.verify import PROB_SUM_TOLERANCE, parse_verify_request

__all__ = ["DEFAULT_TOP_K", "MAX_SAMPLES", "MIN_TEMPERATURE", "PROB_SUM_TOLERANCE", "Limits",
           "Parsed", "info_response", "limits_for", "logprob_dtype", "parse_generate_request",
           "parse_score_request", "parse_verify_request"]

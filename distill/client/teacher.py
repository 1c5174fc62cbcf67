"""Calling the teacher patiently: a worker outlives teacher restarts.

gRPC's retry policy (in the client) covers short blips within one call. When the teacher is down
for longer, this layer waits with exponential backoff, says so in the log (`distill.client.teacher`, WARNING), and carries on when
the teacher is back; past `patience_s` it gives up with TeacherUnreachable.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import Callable, Concatenate, ParamSpec, Protocol, Sequence, TypeVar

import grpc

from distill.client.teacher_client import TeacherClient
from distill.fingerprint import TokenizerMismatch, compare_tokenizers
from distill.results import TeacherSample, TeacherScores, VerifyOutcome
from distill.v1 import teacher_pb2 as pb

# down, slow, or over our tenant's quota: all pass; anything else is a bug to report
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED)

TokenSeq = Sequence[int]
log = logging.getLogger(__name__)


class Teacher(Protocol):
    """What completion sources and losses ask of the teacher: TeacherClient's calls (see it
    for the arguments). A TeacherClient is one; so is a PatientTeacher wrapping one."""

    def info(self, timeout: float | None = None) -> pb.InfoResponse: ...

    def score(self, sequences: Sequence[TokenSeq], score_from: int | Sequence[int], top_k: int = 20,
              temperature: float = 1.0, candidates=None, dtype: str = "float32",
              timeout: float | None = None) -> list[TeacherScores]: ...

    def score_packed(self, sequences: Sequence[TokenSeq], score_from: int | Sequence[int], top_k: int = 20,
                     temperature: float = 1.0, candidates=None, dtype: str = "float32",
                     timeout: float | None = None) -> TeacherScores: ...

    def generate(self, prompts: Sequence[TokenSeq], num_samples: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 64,
                 stop_token_ids: Sequence[int] | None = None, seed: int | None = None,
                 dtype: str = "float32", timeout: float | None = None) -> list[list[TeacherSample]]: ...

    def verify(self, prefixes: Sequence[TokenSeq], drafts: Sequence[TokenSeq], draft_probs=None,
               mode: str = "speculative", top_k: int | None = None, temperature: float = 1.0,
               seed: int | None = None, score_top_k: int | None = None, dtype: str = "float32",
               session_keys: Sequence[str] | None = None, end_sessions: Sequence[bool] | None = None,
               timeout: float | None = None) -> list[VerifyOutcome]: ...


class TeacherUnreachable(RuntimeError):
    pass


P, R = ParamSpec("P"), TypeVar("R")


def _patient(call: Callable[Concatenate[TeacherClient, P], R]) -> Callable[Concatenate[PatientTeacher, P], R]:
    """The client's method `call` with its signature, retried through outages."""
    @functools.wraps(call)
    def patient(self: PatientTeacher, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.retry(lambda: call(self.client, *args, **kwargs))

    return patient


class PatientTeacher:
    """A Teacher that waits out outages: info / score / score_packed / generate / verify as on
    TeacherClient.

    announce: log the retry messages (rank 0 only: N workers would write N copies).
    """

    def __init__(self, client: TeacherClient, patience_s: float, max_backoff_s: float = 15.0,
                 announce: bool = True):
        self.client, self.patience_s, self.max_backoff_s = client, patience_s, max_backoff_s
        self.announce = announce
        self.outage_seconds = 0.0   # total time spent waiting for an unreachable teacher
        self._jitter = random.Random()   # seeded from the OS: each worker waits its own time

    info = _patient(TeacherClient.info)
    score = _patient(TeacherClient.score)
    score_packed = _patient(TeacherClient.score_packed)
    generate = _patient(TeacherClient.generate)
    verify = _patient(TeacherClient.verify)

    def retry(self, attempt: Callable[[], R]) -> R:
        """attempt() until it succeeds, a non-transient error, or patience_s has passed."""
        started, backoff = time.monotonic(), 0.5
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                if err.code() not in _TRANSIENT:
                    raise
                waited = time.monotonic() - started
                if waited >= self.patience_s:
                    raise TeacherUnreachable(
                        f"the teacher at {self.client.target} has been unreachable for {waited:.0f} s "
                        f"(teacher.patience_s={self.patience_s:g}): {err.code().name}: {err.details()}"
                    ) from err
                # a teacher over quota says when to come back (gRPC's retry pushback)
                hint = dict(err.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                pause = max(backoff, int(hint) / 1000 if hint and int(hint) > 0 else 0)
                # jitter: workers that lost the teacher together must not all retry together
                pause = min(pause * self._jitter.uniform(1.0, 1.5), self.patience_s - waited)
                if self.announce:
                    state = "busy" if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "unreachable"
                    log.warning("teacher %s %s (%s: %s); retrying in %.1f s (waited %.0f of %g s)",
                                self.client.target, state, err.code().name, err.details(), pause, waited,
                                self.patience_s, extra=dict(target=self.client.target, status=err.code().name,
                                                            retry_in_s=round(pause, 1), waited_s=round(waited)))
                time.sleep(pause)  # backoff between attempts, not a wait for a condition
                self.outage_seconds += pause
                backoff = min(backoff * 2, self.max_backoff_s)


def check_tokenizer(info, tokenizer, student_path: str) -> None:
    """Refuse to train when the student's tokenizer is not the teacher's; warn when only the
    special tokens differ (distill.fingerprint.compare_tokenizers)."""
    try:
        warning = compare_tokenizers(tokenizer, student_path, info)
    except TokenizerMismatch as err:
        raise SystemExit(str(err)) from None
    if warning:
        log.warning("%s", warning)

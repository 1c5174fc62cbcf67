"""Calling the teacher patiently: a worker outlives teacher restarts.

gRPC's retry policy (in the client) covers short blips within one call. When the teacher is down
for longer, this layer waits with exponential backoff, says so on the console, and carries on when
the teacher is back; past `patience_s` it gives up with TeacherUnreachable.
"""

from __future__ import annotations

import time

import grpc
from tqdm import tqdm

from distill.fingerprint import TokenizerMismatch, compare_tokenizers
from student_worker.teacher_client import TeacherClient

# down, slow, or over our tenant's quota: all pass; anything else is a bug to report
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED)


class TeacherUnreachable(RuntimeError):
    pass


class PatientTeacher:
    def __init__(self, client: TeacherClient, patience_s: float, max_backoff_s: float = 15.0):
        self.client, self.patience_s, self.max_backoff_s = client, patience_s, max_backoff_s
        self.outage_seconds = 0.0   # total time spent waiting for an unreachable teacher

    def __call__(self, method: str, *args, **kwargs):
        started, backoff = time.monotonic(), 0.5
        while True:
            try:
                return getattr(self.client, method)(*args, **kwargs)
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
                pause = min(pause, self.patience_s - waited)
                state = "busy" if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "unreachable"
                tqdm.write(f"teacher {self.client.target} {state} ({err.code().name}: {err.details()}); "
                           f"retrying in {pause:.1f} s (waited {waited:.0f} of {self.patience_s:g} s)")
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
        tqdm.write(f"warning: {warning}")

"""The server's logging: plain text or one JSON object per line, and the per-rpc request log.

The formats are distill.logs' (shared with the worker).
The request log is the logger `teacher_server.requests` at INFO: off unless `--log-requests`.
Messages that native code writes straight to stderr (torch's C++ warnings) stay plain text.
"""

from __future__ import annotations

import logging
import os

from distill import logs

REQUESTS = logging.getLogger("teacher_server.requests")


def setup_logging(level: str, log_format: str = "text", log_requests: bool = False) -> None:
    """Configure the root logger once, for every library in the process (uvicorn is started
    without its own logging config; vLLM is told to leave its logger to the root's handler).
    Call it before importing the model libraries."""
    if log_format == "json":
        # before vLLM is imported: it would install its own text handler on the `vllm` logger
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    logs.setup_logging(level, log_format)
    REQUESTS.setLevel(logging.INFO if log_requests else logging.WARNING)


def log_request(rpc: str, tenant: str, status: str, seconds: float, sequences: int,
                tokens: int) -> None:
    """One line per finished rpc; the fields are also JSON keys."""
    if REQUESTS.isEnabledFor(logging.INFO):
        ms = round(seconds * 1000, 1)
        REQUESTS.info("%s tenant=%s status=%s sequences=%d tokens=%d ms=%.1f",
                      rpc, tenant, status, sequences, tokens, ms,
                      extra=dict(rpc=rpc, tenant=tenant, status=status, sequences=sequences,
                                 tokens=tokens, ms=ms))

"""The server's logging: plain text or one JSON object per line, and the per-rpc request log.

JSON lines (python-json-logger) carry `time` (ISO 8601, UTC), `level`, `logger`, `message`, any
`extra` fields of the call and `exc_info` for tracebacks, so a log shipper needs no parsing rules.
The request log is the logger `teacher_server.requests` at INFO: off unless `--log-requests`.
Messages that native code writes straight to stderr (torch's C++ warnings) stay plain text.
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

REQUESTS = logging.getLogger("teacher_server.requests")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


def setup_logging(level: str, log_format: str = "text", log_requests: bool = False) -> None:
    """Configure the root logger once, for every library in the process (uvicorn is started
    without its own logging config; vLLM is told to leave its logger to the root's handler).
    Call it before importing the model libraries."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
        # Before those libraries are imported: vLLM would install its own text handler on the
        # `vllm` logger, and progress bars (weights loading) are not log lines.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)   # warnings.warn from libraries: log records too
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

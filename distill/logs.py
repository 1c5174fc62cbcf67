"""Logging for the server and the worker alike: plain text or one JSON object per line.

JSON lines (python-json-logger) carry `time` (ISO 8601, UTC), `level`, `logger`, `message`, any
`extra` fields of the call and `exc_info` for tracebacks, so a log shipper needs no parsing rules.
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


def setup_logging(level: str, log_format: str = "text") -> None:
    """Configure the root logger once, for every library in the process. Call it before
    importing the model libraries: in JSON mode their progress bars are turned off (a bar is
    not a log line)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)   # warnings.warn from libraries: log records too

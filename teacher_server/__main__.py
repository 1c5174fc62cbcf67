"""python -m teacher_server --model DIR_OR_HUB_ID [--port 50051] [--http-port 8080] ...

Every flag can also be set from the environment: --max-batch-tokens is TEACHER_MAX_BATCH_TOKENS.
"""

import asyncio
import logging
import os
import signal
import sys

from teacher_server.config import ServerSettings
from teacher_server.server import serve


# Set by TeacherProcess (tests, demos, benchmarks) to the pid of the process that started us.
PARENT_PID_ENV = "DISTILL_PARENT_PID"


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us dies, even by SIGKILL, so an
    interrupted test or demo leaves no teacher behind. Done here, after exec: in the parent,
    between fork and exec, nothing but exec is safe while gRPC's threads run."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):     # it died before prctl took effect
        sys.exit(0)


def main() -> None:
    _die_with_parent()
    settings = ServerSettings(_cli_parse_args=True)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

"""python -m teacher_server --model DIR_OR_HUB_ID [--port 50051] [--http-port 8080] ...

Every flag can also be set from the environment: --max-batch-tokens is TEACHER_MAX_BATCH_TOKENS.
"""

import asyncio
import logging

from teacher_server.config import ServerSettings
from teacher_server.process import die_with_parent
from teacher_server.server import serve


def main() -> None:
    die_with_parent()
    settings = ServerSettings(_cli_parse_args=True)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

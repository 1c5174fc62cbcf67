"""python -m teacher_server --model DIR_OR_HUB_ID [--port 50051] [--http-port 8080] ...
python -m teacher_server info HOST:PORT [--api-key TOKEN] [--tls-ca CA.pem]   (a running teacher's Info)

Every flag can also be set from the environment: --max-batch-tokens is TEACHER_MAX_BATCH_TOKENS
(`--help` lists them all). Installed as the console script `distill-teacher`.
"""

import asyncio
import sys


def main() -> None:
    # imports here, not at the top: `info` is a small client and needs neither torch nor the server
    if sys.argv[1:2] == ["info"]:
        from distill.client.info import main as info_main

        sys.exit(info_main(sys.argv[2:]))
    from teacher_server.config import parse_settings
    from teacher_server.logs import setup_logging
    from teacher_server.process import die_with_parent

    die_with_parent()
    settings = parse_settings()
    setup_logging(settings.log_level, settings.log_format, settings.log_requests)
    from teacher_server.server import serve   # torch, transformers: after logging is set up

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

"""The Dockerfiles read as instructions (continuation lines joined, comments dropped), and this
machine's environment dressed as a container's, to run the images' commands here."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

from tests.helpers import ROOT

DOCKERFILES = {kind: ROOT / "docker" / f"{kind}.Dockerfile" for kind in ("teacher", "worker")}


def image_env(**variables: str) -> dict[str, str]:
    """This environment as a container's: our venv's `python`, `torchrun`, ... first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **variables}


def dockerfile(kind: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILES[kind].read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def dockerfile_args(kind: str) -> dict[str, str]:
    """The build arguments a Dockerfile declares, with their defaults ('' for none)."""
    return dict((args.split("=", 1) + [""])[:2] for instruction, args in dockerfile(kind)
                if instruction == "ARG")


def dockerfile_env(kind: str, build_args: dict[str, str] | None = None) -> dict[str, str]:
    """The image's ENV, ${ARG}s replaced by build_args or else their defaults."""
    values = {**dockerfile_args(kind), **(build_args or {})}
    env = {}
    for instruction, args in dockerfile(kind):
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, value = pair.split("=", 1)
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], m[0]), value)
    return env


def copy_sources(kind: str) -> list[str]:
    """What a Dockerfile's COPY instructions take from the build context (not from a stage)."""
    return [source for instruction, args in dockerfile(kind) if instruction == "COPY"
            and not args.startswith("--from=") for source in args.split()[:-1]]


def exec_form(kind: str, instruction: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD, or of HEALTHCHECK's CMD."""
    [args] = [a for i, a in dockerfile(kind) if i == instruction]
    return json.loads(args[args.index("["):])

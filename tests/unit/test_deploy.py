"""The Dockerfiles by the rules that matter, read as files: a pinned base, stages in order, not root,
sources that exist and are not ignored by .dockerignore (Compose, hadolint and the images' commands:
tests/e2e/test_deploy.py)."""

import fnmatch
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.dockerfiles import (DOCKERFILES, copy_sources, dockerfile, dockerfile_args, dockerfile_env,
                                       exec_form)


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_rules(kind):
    steps = dockerfile(kind)
    # the base is a build argument whose default is pinned: an exact version tag (x.y.z) or a
    # digest, never latest or a bare major; the other stages start from earlier ones
    base = dockerfile_args(kind)["BASE_IMAGE"]
    assert re.search(r":\S*\d+\.\d+\.\d+|@sha256:[0-9a-f]{64}", base), base
    stages = ["${BASE_IMAGE}"]
    for instruction, args in steps:
        if instruction == "FROM":
            image, *alias = args.split()
            assert image in stages, args
            stages += alias[1:]
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    assert all((ROOT / source).exists() for source in copy_sources(kind))
    if kind == "teacher":
        assert exec_form(kind, "HEALTHCHECK") == ["python", "-m", "distill.client.probe"]
        assert dockerfile_env(kind)["TEACHER_BACKEND"] == "vllm"


def test_dockerignore_keeps_the_environment_out_and_the_sources_in():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", ".git", "demo-output"} <= set(patterns)
    ignored = lambda path: any(fnmatch.fnmatch(part, pattern.removeprefix("**/"))
                               for pattern in patterns for part in (path, *Path(path).parts))
    copied = [source for kind in DOCKERFILES for source in copy_sources(kind)]
    assert copied and not [source for source in copied if ignored(source)]

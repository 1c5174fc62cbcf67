"""The worker's import graph: stages depend one way (no cycle, lazy imports included), and the
config module is a leaf that loads neither torch nor transformers (loading a config never loads
a model stack)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("student_worker", "distill")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (functions too: a lazy import still
    closes a cycle), a `from package import module` counted as the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) - {module_name(p)} for p in files}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of modules ([] if none): depth-first search."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return []

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_import_cycle_among_the_worker_and_shared_modules():
    edges = graph()
    assert "student_worker.config" in edges and len(edges) > 30
    assert cycle(edges) == []
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]   # the check can fail


def test_the_config_module_is_a_leaf():
    assert graph()["student_worker.config"] <= {"student_worker"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, student_worker.config; print(sorted({m.split('.')[0] for m in sys.modules}))"],
        capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "'torch'" not in loaded and "'transformers'" not in loaded, loaded


@pytest.mark.parametrize("old,new,name", [
    ("student_worker.teacher_client", "distill.client.teacher_client", "TeacherClient"),
    ("student_worker.trainer", "student_worker.train.trainer", "train"),
    ("student_worker.prune", "student_worker.tools.prune", "main"),
    ("teacher_server.probe", "distill.client.probe", "main"),
])
def test_moved_modules_keep_their_old_path_for_one_release(old, new, name):
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
            f"warnings.simplefilter('ignore')\nimport {old} as a, {new} as b\n"
            f"assert getattr(a, {name!r}) is getattr(b, {name!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and f"moved to {new}" in out.stdout, out.stderr[-2000:]


def test_every_backend_the_server_offers_is_registered():
    import typing

    from teacher_server.backends import BACKENDS
    from teacher_server.config import ServerSettings

    assert set(typing.get_args(ServerSettings.model_fields["backend"].annotation)) == set(BACKENDS)

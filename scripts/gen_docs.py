"""The reference tables in docs/, written from the code so they never drift from `--help`.

    python -m scripts.gen_docs            # rewrite every generated block (`make docs`)
    python -m scripts.gen_docs --check    # exit 1, naming each stale block, when a rewrite would change a file

A generated block sits between two marker comments in a Markdown file:

    <!-- generated: teacher-flags -->
    ...whatever this script writes...
    <!-- end generated -->

Everything outside the markers is hand-written and left alone. The blocks (BLOCKS below):

- teacher-flags (docs/teacher.md): every field of teacher_server.config.ServerSettings, the
  pydantic-settings model that `python -m teacher_server --help` is printed from: the flag, its
  TEACHER_* variable, type, default and description.
- worker-options (docs/training.md): the command's own options, taken from the `options:` group of
  `python -m student_worker --help` (run in this process).
- worker-config (docs/training.md): every key of student_worker.config.config_keys_model (RunConfig
  with the built-in methods' keys in one `method` section, each saying which methods have it), one
  table per section: key, type, default, description. Nested models become dotted keys
  (student.lora.r); a field whose type is a union of models lists each model's keys, with the
  variants that have a key named beside it.
- presets (docs/training.md): student_worker.config.PRESETS, each as the keys it sets.
- results (docs/results/*.md and README.md's headline tables): each demo's own renderer applied to
  the numbers it published (docs/results/NAME.json, written by `make demo ... PUBLISH=1` through
  `publish` below), so a page's numbers are always those of the last published run.

tests/unit/test_docs.py runs the check, and `broken_links` (also here) over README.md and docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
END = "<!-- end generated -->"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(" + re.escape(END) + ")", re.S)


# ---- rendering pydantic fields ------------------------------------------------------------------

def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int`, `str | null`, `ddp | fsdp`, `list[str]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    """A field's default as it would be written in a YAML config (or `required`)."""
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (`X`, `X | None`, `Annotated[A | B, ...]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def variant_label(model: type[BaseModel], discriminator: str | None) -> str:
    """How a member of a union of models is named: its discriminator's value, else its class."""
    field = model.model_fields.get(discriminator or "")
    if field is not None and typing.get_origin(field.annotation) is Literal:
        return ", ".join(map(str, typing.get_args(field.annotation)))
    return model.__name__


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str
    variants: tuple[str, ...] = ()   # the union members that have this key; () for every config


def config_rows(model: type[BaseModel], prefix: str = "", variants: tuple[str, ...] = ()) -> list[Row]:
    """One row per key of `model`, nested models flattened to dotted keys."""
    rows: list[Row] = []
    for name, field in model.model_fields.items():
        key, sub = prefix + name, models_in(field.annotation)
        description = " ".join((field.description or "").split())
        if not sub:
            rows.append(Row(key, type_name(field.annotation), default_text(field), description, variants))
            continue
        optional = type(None) in typing.get_args(field.annotation)
        if optional or description:   # a section one can leave out or set whole deserves its row
            rows.append(Row(key, type_name(field.annotation), default_text(field), description, variants))
        if len(sub) == 1:   # a mapping of models (named teachers) has a NAME level
            mapping = any(typing.get_origin(t) is dict for t in (field.annotation, *typing.get_args(field.annotation)))
            rows += config_rows(sub[0], key + (".NAME." if mapping else "."), variants)
            continue
        disc = field.discriminator if isinstance(field.discriminator, str) else None
        for member in sub:
            rows += config_rows(member, key + ".", (*variants, variant_label(member, disc)))
    return _merge_variants(rows)


def _merge_variants(rows: list[Row]) -> list[Row]:
    """A key several union members share, with the same type, default and description, is one
    row naming them all (in first-seen order)."""
    merged: dict[tuple, Row] = {}
    for row in rows:
        same = (row.key, row.type, row.default, row.description)
        if same in merged and row.variants:
            merged[same].variants = (*merged[same].variants, *row.variants)
        else:
            merged.setdefault(same, row)
    return list(merged.values())


def cell(text: str) -> str:
    """Markdown table cells: a `|` ends the cell unless escaped (also inside backticks)."""
    return text.replace("|", r"\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- the blocks ---------------------------------------------------------------------------------

def teacher_flags() -> str:
    from teacher_server.config import ServerSettings

    prefix = ServerSettings.model_config["env_prefix"]
    rows = []
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        flag = f"{flag}, --no-{flag[2:]}" if field.annotation is bool else flag
        rows.append([f"`{flag}`", f"`{prefix}{name.upper()}`", f"`{type_name(field.annotation)}`",
                     default_text(field), " ".join((field.description or "").split())])
    return table(["flag", "variable", "type", "default", "description"], rows)


def help_text(main: Callable[[list[str]], Any]) -> str:
    """What `main(["--help"])` prints, one line per option (a wide terminal for argparse)."""
    out, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "10000"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["--help"])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue()


def help_options(text: str, group: str = "options") -> list[tuple[str, str]]:
    """(option with its argument, help) of one argparse group of `--help` output."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.rstrip() == f"{group}:") + 1
    options: list[list[str]] = []
    for line in lines[start:]:
        if not line.strip():
            break
        if line.startswith("  -"):
            option, _, help_ = line.strip().partition("  ")
            options.append([option, help_.strip()])
        else:   # the help went to the next line: the option's name was too long
            options[-1][1] = f"{options[-1][1]} {line.strip()}".strip()
    return [(option, help_) for option, help_ in options]


def worker_help() -> str:
    from student_worker.__main__ import main

    return help_text(main)


def worker_options() -> str:
    rows = [[f"`{option}`", help_] for option, help_ in help_options(worker_help()) if option != "-h, --help"]
    return table(["option", "description"], rows)


def worker_config() -> str:
    from student_worker.config import BUILT_IN_SETTINGS, config_keys_model

    keys = config_keys_model(BUILT_IN_SETTINGS)   # not a method some imported module registered
    parts = []
    for section, field in keys.model_fields.items():
        models = models_in(field.annotation)
        if not models:
            continue
        rows = [r for r in config_rows(keys) if r.key.split(".")[0] == section and r.key != section]
        note = " (optional: `null` leaves it out)" if type(None) in typing.get_args(field.annotation) else ""
        body = [[f"`{r.key}`", f"`{r.type}`", r.default,
                 (f"({', '.join(r.variants)}) " if r.variants else "") + r.description] for r in rows]
        parts.append(f"**`{section}`**{note}\n\n" + table(["key", "type", "default", "description"], body))
    return "\n".join(parts)


def flatten(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out += flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={json.dumps(value)}"]
    return out


def presets() -> str:
    from student_worker.config import PRESETS

    return table(["preset", "sets"], [[f"`{name}`", " ".join(f"`{kv}`" for kv in flatten(keys))]
                                      for name, keys in PRESETS.items()])


# ---- results: each demo publishes its numbers as docs/results/NAME.json; its own renderer ----------

RESULTS = ROOT / "docs" / "results"


def published(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path.relative_to(ROOT)} is missing: the demo writes it (--publish)")
    return json.loads(path.read_text())


def demo_results(task: str) -> Callable[[], str]:
    def make() -> str:
        from examples.demo import results_table

        return results_table(published(task), heading=False)
    return make


def digsum_headline() -> str:
    from examples.demo import headline_table

    return headline_table(published("digsum"))


def smollm2_results() -> str:
    from examples.demo_llm.report import results_table

    return results_table(published("smollm2"), heading=False)


def smollm2_headline() -> str:
    from examples.demo_llm.report import headline_table

    return headline_table(published("smollm2"))


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "teacher-flags": ("docs/teacher.md", teacher_flags),
    "worker-options": ("docs/training.md", worker_options),
    "worker-config": ("docs/training.md", worker_config),
    "presets": ("docs/training.md", presets),
    "digsum-results": ("docs/results/digsum.md", demo_results("digsum")),
    "digsum-one-answer-results": ("docs/results/digsum.md", demo_results("digsum-one-answer")),
    "digsum-headline": ("README.md", digsum_headline),
    "ringwalk-canonical-results": ("docs/results/ringwalk.md", demo_results("ringwalk-canonical")),
    "smollm2-results": ("docs/results/smollm2.md", smollm2_results),
    "smollm2-headline": ("README.md", smollm2_headline),
}


def publish(name: str, results: dict) -> None:
    """Keep a demo's results as docs/results/NAME.json and rewrite the blocks made from them."""
    RESULTS.joinpath(f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    for file in stale(write=True):
        print(f"{file}: rewritten")


def render(path: Path, blocks: dict[str, str]) -> str:
    """`path`'s text with each of its generated blocks replaced by `blocks[name]`."""
    text = path.read_text()
    found = [m["name"] for m in BLOCK.finditer(text)]
    for name in blocks:
        if found.count(name) != 1:
            raise SystemExit(f"{path.relative_to(ROOT)}: needs exactly one '<!-- generated: {name} -->' "
                             f"... '{END}' block (found {found.count(name)})")
    unknown = set(found) - set(blocks)
    if unknown:
        raise SystemExit(f"{path.relative_to(ROOT)}: unknown generated block(s) {sorted(unknown)}")
    return BLOCK.sub(lambda m: m[1] + blocks[m["name"]] + m[4], text)


def stale(write: bool) -> list[str]:
    """The files whose generated blocks differ from what this script writes (rewritten if write)."""
    by_file: dict[str, dict[str, str]] = {}
    for name, (file, make) in BLOCKS.items():
        by_file.setdefault(file, {})[name] = make()
    changed = []
    for file, blocks in by_file.items():
        path = ROOT / file
        text = render(path, blocks)
        if text != path.read_text():
            changed.append(file)
            if write:
                path.write_text(text)
    return changed


# ---- links --------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = slug(match[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def broken_links(files: list[Path] | None = None) -> list[str]:
    """'file: target (why)' for each relative link that points nowhere: a missing file, or an
    anchor (#...) that no heading of the Markdown file it names has. Links in code blocks and
    to other sites are not checked."""
    bad = []
    for path in files or doc_files():
        for target in LINK.findall(FENCE.sub("", path.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):   # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {target}"
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where} (no heading #{anchor})")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    args = parser.parse_args(argv)
    changed = stale(write=not args.check)
    for file in changed:
        print(f"{file}: {'stale generated block(s); run make docs' if args.check else 'rewritten'}")
    for link in broken_links():
        print(f"broken link: {link}", file=sys.stderr)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())

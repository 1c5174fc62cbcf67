"""The docs match the code: the generated tables are what `make docs` would write now, every
option `--help` shows is in them, every relative link points somewhere, and the README stays a
front page from which every page in docs/ can be reached. No processes: the `--help`s are
printed in this process."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field

from scripts import gen_docs
from scripts.gen_docs import ROOT


def generated(file: str, name: str) -> str:
    text = (ROOT / file).read_text()
    match = next(m for m in gen_docs.BLOCK.finditer(text) if m["name"] == name)
    return match["body"]


def test_generated_tables_are_current():
    assert gen_docs.stale(write=False) == [], "stale generated tables: run `make docs`"


def test_every_server_flag_of_help_is_documented():
    from teacher_server.config import ServerSettings

    help_ = gen_docs.help_text(lambda argv: ServerSettings(_cli_parse_args=argv))
    flags = set(re.findall(r"(?m)^\s+(--[a-z][\w-]*)", help_))
    table = generated("docs/teacher.md", "teacher-flags")
    assert len(flags) > 20
    assert [f for f in sorted(flags) if f"`{f}`" not in table and f"`{f}," not in table] == []


def test_every_worker_option_and_key_of_help_is_documented():
    help_ = gen_docs.worker_help()
    options = [option.split()[0] for option, _ in gen_docs.help_options(help_) if option != "-h, --help"]
    table = generated("docs/training.md", "worker-options")
    assert options and [o for o in options if f"`{o}" not in table] == []
    # `--section.key TYPE` lines; `--section [JSON]` (a whole section as JSON) has no row of its own
    keys = re.findall(r"(?m)^\s+--([a-z_]+\.[\w.]+) (?!\[JSON\])", help_)
    config = generated("docs/training.md", "worker-config")
    assert len(keys) > 50
    assert [k for k in keys if f"`{k}`" not in config] == []


def test_relative_links_point_to_files_and_headings():
    assert gen_docs.broken_links() == []


def test_the_link_checker_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Some heading: `code`\n")
    page.write_text("# Top\n[a](other.md#some-heading-code) [b](#top) [c](https://example.com/x)\n"
                    "[d](missing.md) [e](other.md#nowhere) [f](#gone)\n```\n[g](in-code.md)\n```\n")
    assert gen_docs.broken_links([page]) == [
        f"{page}: missing.md (no such file)", f"{page}: other.md#nowhere (no heading #nowhere)",
        f"{page}: #gone (no heading #gone)"]


def test_readme_is_a_front_page_that_reaches_every_doc():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    seen, todo = set(), [readme]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        for target in gen_docs.LINK.findall(gen_docs.FENCE.sub("", page.read_text())):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and target.partition("#")[0]:
                todo.append((page.parent / target.partition("#")[0]).resolve())
    docs = set((ROOT / "docs").rglob("*.md"))
    assert sorted(str(p.relative_to(ROOT)) for p in docs - seen) == []


def test_config_rows_flatten_sections_and_name_union_variants():
    class Lora(BaseModel):
        r: int = Field(16, description="rank")

    class Student(BaseModel):
        path: str = Field(description="model folder")
        lora: Lora | None = Field(None, description="adapters")

    class Gkd(BaseModel):
        name: Literal["gkd"] = "gkd"
        beta: float = 0.5
        reduction: Literal["token", "sequence"] = "token"

    class Sft(BaseModel):
        name: Literal["sft"] = "sft"
        reduction: Literal["token", "sequence"] = "token"

    class Run(BaseModel):
        student: Student
        method: Annotated[Union[Gkd, Sft], Field(discriminator="name")] = Gkd()

    rows = {(r.key, r.variants): r for r in gen_docs.config_rows(Run)}
    assert rows["student.path", ()].default == "required"
    assert rows["student.lora", ()].type == "section | null"
    assert rows["student.lora.r", ()].description == "rank"
    assert rows["method.beta", ("gkd",)].default == "`0.5`"
    assert rows["method.reduction", ("gkd", "sft")].type == "token | sequence"
    assert ("method.name", ("sft",)) in rows

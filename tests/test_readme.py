"""The README and docs/ stay true: the README's file tree lists every module and test file and links every
page of docs/; docs/reference.md documents every spec key and kind option, docs/commands.md every
command; and every relative link in them points at a file that exists."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import typer.main

from metapt import spec as S
from metapt.catalog import KINDS
from metapt.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
REFERENCE = (DOCS / "reference.md").read_text()  # the TOML reference: every key, every kind option
COMMANDS = (DOCS / "commands.md").read_text()


def _file_tree() -> set[str]:
    """The paths of the README's file tree (its `## Files` section), each folder from its indentation."""
    tree = README.split("\n## Files\n", 1)[1].split("\n## ", 1)[0]
    folders: list[str] = []
    paths = set()
    for line in tree.splitlines():
        match = re.match(r"    ( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name)
        else:
            paths.add("".join(folders) + name)
    return paths


def test_every_python_file_is_in_the_file_tree() -> None:
    files = sorted(p.relative_to(ROOT) for p in [*ROOT.glob("metapt/**/*.py"), *ROOT.glob("tests/*.py")])
    tree = _file_tree()
    assert "metapt/cli.py" in tree and "tests/test_readme.py" in tree
    missing = [str(f) for f in files if f.as_posix() not in tree]
    assert not missing, f"README file tree lacks: {missing}"


def _keys(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"[{f.name}].")
        else:
            out.append(f"`{prefix}{f.name}`")
    return out


def test_every_toml_key_is_documented() -> None:
    keys = _keys(S.TaskSpec, "") + _keys(S.RunSpec, "")
    assert len(keys) > 60
    missing = [k for k in keys if k not in REFERENCE]
    assert not missing, f"docs/reference.md lacks: {missing}"


def test_every_kind_option_is_documented() -> None:
    missing = [
        f"{k}.{o}" for k, info in KINDS.items() for o in info.options if f"| {k} | `{o}` |" not in REFERENCE
    ]
    assert not missing


def test_every_command_is_documented() -> None:
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert {"pretrain", "finetune", "evaluate", "inspect-tasks", "validate"} <= set(commands)
    missing = [c for c in commands if f"| `metapt {c}" not in COMMANDS]
    assert not missing


def test_every_option_is_in_its_commands_row() -> None:
    """docs/commands.md's row of a command shows every long option its --help lists."""
    rows = {
        line.split("`")[1].split()[1]: line for line in COMMANDS.splitlines() if line.startswith("| `metapt ")
    }
    missing = [
        f"{name} {opt}"
        for name, command in typer.main.get_command(app).commands.items()
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in rows[name].split("` |")[0]
    ]
    assert missing == []


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert len(pages) >= 10
    assert [p for p in pages if f"](docs/{p})" not in README] == []
    broken = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith(("http://", "https://")) and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []

"""Find task specs by name and parse run specs with the tasks they reference (the rules: validation.py).

Names resolve against ./tasks (recursively), then against the specs shipped inside the package,
so an installed `metapt` works from any folder.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import cache
from pathlib import Path

from metapt.errors import Problem, SpecError, did_you_mean, suggest
from metapt.spec import RunSpec, TaskSpec
from metapt.validation import build_run, is_run_spec, parse_task, read_toml, run_problems


def builtin_dir() -> Path:
    """The specs shipped with the package (copied into metapt/tasks at build time)."""
    inside = Path(__file__).parent / "tasks"
    return inside if inside.is_dir() else Path(__file__).parent.parent / "tasks"


def search_roots() -> list[Path]:
    """Where task names are looked up, in order: ./tasks, then the built-in specs."""
    roots = [Path.cwd() / "tasks", builtin_dir()]
    seen, out = set(), []
    for r in roots:
        if r.is_dir() and r.resolve() not in seen:
            seen.add(r.resolve())
            out.append(r)
    return out


@cache
def _index(root: Path) -> dict[str, Path]:
    """Task name -> spec file under one root; run specs and unreadable files are skipped here."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.toml")):
        try:
            table = read_toml(path)
        except SpecError:
            continue
        if is_run_spec(table):
            continue
        name = table.get("name") if isinstance(table.get("name"), str) and table.get("name") else path.stem
        found.setdefault(name, path)
    return found


def task_files(paths: list[Path] | None = None) -> list[Path]:
    """Every task spec file under `paths` (files or folders); default: the search roots."""
    out: list[Path] = []
    for p in paths or search_roots():
        files = sorted(p.rglob("*.toml")) if p.is_dir() else [p]
        for f in files:
            try:
                if not is_run_spec(read_toml(f)):
                    out.append(f)
            except SpecError:
                out.append(f)  # listed, so the caller reports why it does not parse
    return out


def run_references(path: Path) -> list[tuple[str, str, Path | SpecError]]:
    """(role: source | target, the reference as written, its spec file or why no file has that name)
    for every task a run spec's [meta].sources and [meta].targets name, in order; found as
    `parse_run` finds them. SpecError when the lists are not lists of names or files."""
    meta = read_toml(path).get("meta", {})
    out: list[tuple[str, str, Path | SpecError]] = []
    for role, key in (("source", "sources"), ("target", "targets")):
        refs = meta.get(key, []) if isinstance(meta, dict) else []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise SpecError(
                [Problem(str(path), f"[meta].{key}", "expected a list of task names or spec files")]
            )
        for ref in refs:
            try:  # a missing file is reported when parsed
                out.append((role, ref, task_path(ref, path.parent)))
            except SpecError as e:
                problems = [Problem(str(path), f"[meta].{key}", q.message) for q in e.problems]
                out.append((role, ref, SpecError(problems)))
    return out


def _known_tasks() -> dict[str, Path]:
    """Task name -> spec file, over the search roots in order."""
    known: dict[str, Path] = {}
    for root in search_roots():
        for n, p in _index(root).items():
            known.setdefault(n, p)
    return known


@cache
def _run_names(root: Path) -> tuple[str, ...]:
    """The names of the run specs under one root, as find_run takes them (`agnostic`, `paper/aware-qa`)."""
    names = []
    for path in sorted(root.rglob("*.toml")):
        try:
            if is_run_spec(read_toml(path)):
                names.append(path.relative_to(root).with_suffix("").as_posix())
        except SpecError:
            continue
    return tuple(names)


def not_found(ref: str, path: Path) -> SpecError:
    """ "no such file" for a spec reference that names nothing, with the close names: the .toml files
    in the folder it names, the built-in task names and run spec names (difflib's close matches)."""
    stem = Path(ref).name.removesuffix(".toml")
    close = []
    if path.parent.is_dir():  # `--task path/rtee.toml`: path/rte.toml beside it
        stems = [f.stem for f in path.parent.glob("*.toml")]
        close += [str(path.parent / f"{c}.toml") for c in difflib.get_close_matches(stem, stems, n=3)]
    names = [*_known_tasks(), *(n for root in search_roots() for n in _run_names(root))]
    for word in (ref.removeprefix("tasks/").removesuffix(".toml"), stem):  # paper/agnostc, then agnostc
        close += [c for c in difflib.get_close_matches(word, names, n=3) if c not in close]
    what = "no such file" if "/" in ref or ref.endswith(".toml") else "no such file or spec name"
    return SpecError([Problem(str(path), "", what + did_you_mean(close[:3]))])


def find_task(name: str) -> Path:
    """The spec file for a task name; an unknown name lists the known ones."""
    known = _known_tasks()
    if name in known:
        return known[name]
    raise SpecError(
        [
            Problem(
                "<task name>",
                "",
                f"unknown task {name!r}{suggest(name, known)}; "
                f"known tasks: {', '.join(sorted(known)) or 'none'}",
            )
        ]
    )


def task_path(ref: str, relative_to: Path | None = None) -> Path:
    """The spec file of a task reference: a path (a .toml, relative to `relative_to` or the working
    directory; not checked here), or a name looked up by `find_task`."""
    if ref.endswith(".toml") or "/" in ref:
        return Path(ref) if relative_to is None else relative_to / ref
    return find_task(ref)


def load_task(ref: str, relative_to: Path | None = None) -> TaskSpec:
    """A task by name, or by path (a .toml, relative to `relative_to` or the working directory); a
    path to nothing is a SpecError naming the close files and task names."""
    path = task_path(ref, relative_to)
    if not path.exists():
        raise not_found(ref, path)
    return parse_task(path)


def parse_run(path: Path) -> RunSpec:
    """Build a run spec and every task it references; raise SpecError with all problems at once."""
    path = Path(path)
    spec, problems = build_run(read_toml(path), path)
    sources = _resolve(path, "[meta].sources", spec.meta.sources, problems)
    targets = _resolve(path, "[meta].targets", spec.meta.targets, problems)
    problems += run_problems(spec, path, sources, targets)
    if problems:
        raise SpecError(problems)
    return dataclasses.replace(spec, path=str(path), sources=tuple(sources), targets=tuple(targets))


def _resolve(path: Path, key: str, refs: tuple[str, ...], problems: list[Problem]) -> list[TaskSpec]:
    out = []
    for ref in refs:
        try:
            out.append(load_task(ref, relative_to=path.parent))
        except SpecError as e:
            for p in e.problems:
                if p.file == "<task name>" or (p.message.startswith("no such file") and not p.key):
                    hint = p.message.removeprefix("no such file")
                    where = (
                        ""
                        if p.file == "<task name>"
                        else f"{ref!r}: no such file (looked for {p.file}){hint}"
                    )
                    problems.append(Problem(str(path), key, where or p.message))
                else:
                    problems.append(p)
    return out


def find_run(ref: str) -> Path:
    """A run spec by path, or by name among ./tasks and the built-in specs (`agnostic`,
    `tasks/agnostic.toml` from any folder, `paper/aware-qa`); else a task spec by name (`rte`, in
    tasks/glue/), so `validate` takes what `finetune --task` takes. SpecError (with the close names)
    when nothing has that name."""
    path = Path(ref)
    if path.is_file():
        return path
    name = ref.removeprefix("tasks/")
    for root in search_roots():
        for candidate in (root / name, root / f"{name}.toml"):
            if candidate.is_file():
                return candidate
    if "/" not in ref and not ref.endswith(".toml"):
        try:
            return find_task(ref)
        except SpecError:
            pass
    if path.exists():  # a folder: read_toml says so
        return path
    raise not_found(ref, path)


def parse_any(path: Path) -> RunSpec | TaskSpec:
    """A run spec or a task spec, whichever the file is."""
    table = read_toml(Path(path))
    return parse_run(Path(path)) if is_run_spec(table) else parse_task(Path(path), table)

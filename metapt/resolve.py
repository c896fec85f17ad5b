"""Find task specs by name and parse run specs with the tasks they reference.

Names resolve against ./tasks (recursively), then against the specs shipped inside the package,
so an installed `metapt` works from any folder.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

from metapt import mixture
from metapt.catalog import KINDS
from metapt.errors import Problem, SpecError
from metapt.spec import (
    MetaSpec,
    RunSpec,
    TaskSpec,
    _build,
    _split,
    _suggest,
    is_run_spec,
    parse_task,
    read_toml,
)


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


def find_task(name: str) -> Path:
    """The spec file for a task name; an unknown name lists the known ones."""
    known: dict[str, Path] = {}
    for root in search_roots():
        for n, p in _index(root).items():
            known.setdefault(n, p)
    if name in known:
        return known[name]
    raise SpecError(
        [
            Problem(
                "<task name>",
                "",
                f"unknown task {name!r}{_suggest(name, known)}; "
                f"known tasks: {', '.join(sorted(known)) or 'none'}",
            )
        ]
    )


def load_task(ref: str, relative_to: Path | None = None) -> TaskSpec:
    """A task by name, or by path (a .toml, relative to `relative_to` or the working directory)."""
    if ref.endswith(".toml") or "/" in ref:
        path = Path(ref) if relative_to is None else relative_to / ref
        return parse_task(path)
    return parse_task(find_task(ref))


def parse_run(path: Path) -> RunSpec:
    """Build a run spec and every task it references; raise SpecError with all problems at once."""
    path = Path(path)
    table = read_toml(path)
    text: list[str] = []
    if "kind" in table:
        text.append("kind: this is a task spec; `metapt pretrain` takes a run spec with [run] and [meta]")
    spec = _build(RunSpec, {k: v for k, v in table.items() if k != "kind"}, "", text)
    problems = [Problem(str(path), *_split(p)) for p in text]
    meta = spec.meta
    setting_ok = not any(p.startswith("[meta].setting") for p in text)
    if not meta.sources:
        problems.append(Problem(str(path), "[meta].sources", "missing; name at least one source task"))
    if setting_ok and meta.setting == "aware" and not meta.targets:
        problems.append(
            Problem(
                str(path),
                "[meta].targets",
                "an aware run needs target tasks; set targets or use setting = 'agnostic'",
            )
        )
    if setting_ok and meta.setting == "agnostic" and meta.targets:
        problems.append(
            Problem(
                str(path),
                "[meta].targets",
                "an agnostic run scores the sources themselves; leave targets empty or use setting = 'aware'",
            )
        )
    if spec.model.hidden_size % spec.model.num_heads:
        problems.append(
            Problem(
                str(path),
                "[model].num_heads",
                f"{spec.model.num_heads} does not divide hidden_size = {spec.model.hidden_size}",
            )
        )
    if not spec.run.output_dir.strip():  # "" would be the working folder, whatever is in it
        problems.append(
            Problem(
                str(path), "[run].output_dir", 'empty; name a folder such as "ckpt" (or "." for this one)'
            )
        )
    if not _valid_device(spec.run.device):
        problems.append(
            Problem(
                str(path),
                "[run].device",
                f"{spec.run.device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N, mps",
            )
        )
    sources = _resolve(path, "[meta].sources", meta.sources, problems)
    targets = _resolve(path, "[meta].targets", meta.targets, problems)
    for t in sources:
        if KINDS[t.kind].role != "source":
            problems.append(
                Problem(
                    str(path),
                    "[meta].sources",
                    f"{t.name!r} is a {t.kind} task, not a "
                    "pretraining objective; put labelled tasks in targets",
                )
            )
    if not spec.model.pretrained:
        for t in (*sources, *targets):
            if t.batch.max_length > spec.model.max_length:
                problems.append(
                    Problem(
                        str(path),
                        "[model].max_length",
                        f"{spec.model.max_length} is shorter than "
                        f"task {t.name!r}'s [batch].max_length = {t.batch.max_length}; raise it to at "
                        f"least {t.batch.max_length} or shorten the task's batches",
                    )
                )
    names = [t.name for t in (*sources, *targets)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(
            Problem(str(path), "[meta]", f"duplicate task name {dup!r}; each task may appear once")
        )
    if meta.scheduler == "single" and meta.single_task and meta.single_task not in [t.name for t in sources]:
        problems.append(
            Problem(
                str(path),
                "[meta].single_task",
                f"{meta.single_task!r} is not a source; allowed: {', '.join(meta.sources)}",
            )
        )
    problems += [Problem(str(path), "[meta].selection_params", m) for m in _params_problems(spec)]
    if meta.scheduler == "mixture" and len(sources) == len(meta.sources):  # names known: check the file
        problems += [Problem(str(path), "[meta].mixture", m) for m in _mixture_problems(path, meta, sources)]
    if problems:
        raise SpecError(problems)
    return dataclasses.replace(spec, path=str(path), sources=tuple(sources), targets=tuple(targets))


def _params_problems(spec: RunSpec) -> list[str]:
    """`all`, or `top:K` with 1 <= K (and K <= [model].num_layers for a new encoder)."""
    rule = spec.meta.selection_params
    match = re.fullmatch(r"top:(\d+)", rule)
    if rule != "all" and (match is None or int(match.group(1)) < 1):
        return [f"{rule!r} is not allowed; allowed: 'all', or 'top:K' with K >= 1 (e.g. 'top:1')"]
    if match and not spec.model.pretrained and int(match.group(1)) > spec.model.num_layers:
        return [
            f"{rule!r} asks for more layers than [model].num_layers = {spec.model.num_layers}; "
            f"allowed: top:1 to top:{spec.model.num_layers}, or 'all'"
        ]
    return []


def _mixture_problems(path: Path, meta: MetaSpec, sources: list[TaskSpec]) -> list[str]:
    """What keeps the mixture scheduler from replaying [meta].mixture over these sources."""
    if not meta.mixture:
        return [
            "missing; scheduler = 'mixture' replays the shares of a mixture.json, e.g. the "
            "OUTPUT_DIR/mixture.json of a meta run"
        ]
    where = mixture.location(str(path), meta.mixture)
    return mixture.load(where, [t.name for t in sources], meta.mixture_phases)[1]


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


def _resolve(path: Path, key: str, refs: tuple[str, ...], problems: list[Problem]) -> list[TaskSpec]:
    out = []
    for ref in refs:
        try:
            out.append(load_task(ref, relative_to=path.parent))
        except SpecError as e:
            for p in e.problems:
                if p.file == "<task name>" or (p.message == "no such file" and not p.key):
                    where = "" if p.file == "<task name>" else f"{ref!r}: no such file (looked for {p.file})"
                    problems.append(Problem(str(path), key, where or p.message))
                else:
                    problems.append(p)
    return out


def find_run(ref: str) -> Path:
    """A run spec by path, or by name among ./tasks and the built-in specs (`agnostic`,
    `tasks/agnostic.toml` from any folder, `paper/aware-qa`)."""
    path = Path(ref)
    if path.is_file():
        return path
    name = ref.removeprefix("tasks/")
    for root in search_roots():
        for candidate in (root / name, root / f"{name}.toml"):
            if candidate.is_file():
                return candidate
    return path  # parse_run reports it missing


def parse_any(path: Path) -> RunSpec | TaskSpec:
    """A run spec or a task spec, whichever the file is."""
    table = read_toml(Path(path))
    return parse_run(Path(path)) if is_run_spec(table) else parse_task(Path(path), table)

"""What `metapt inspect-tasks` shows: one row per task spec found, with example counts on request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from metapt.catalog import KINDS, roles
from metapt.errors import MetaptError, MissingDataError
from metapt.resolve import find_run, run_references, task_files
from metapt.spec import TaskSpec
from metapt.validation import is_run_spec, parse_task, read_toml


def _location(spec: TaskSpec) -> str:
    d = spec.data
    if d.format == "hf":
        return f"{d.dataset}" + (f" ({d.subset})" if d.subset else "")
    if d.format == "synthetic":
        return f"{d.corpus} (size {d.size}, seed {d.seed})"
    return ", ".join(f"{s}: {getattr(d, s)}" for s in d.splits())


def count_examples(spec: TaskSpec) -> dict[str, int]:
    """Examples per split, read through the real readers (a test split that is not there is left
    out, as finetune leaves it out)."""
    from metapt.data.pipeline import read_task_split
    from metapt.localdata import without_missing_test

    spec, _ = without_missing_test(spec)
    counts = {}
    for split in spec.data.splits():
        ds = read_task_split(spec, split)
        counts[split] = (
            ds.num_rows if hasattr(ds, "num_rows") and ds.num_rows is not None else sum(1 for _ in ds)
        )
    return counts


# (name, its spec file, or the run spec when no file has that name, why not, its role in a run)
Entry = tuple[str, Path, MetaptError | None, dict[str, str] | None]


def _entries(paths: list[Path] | None) -> list[Entry]:
    """The task specs to list: those in the folders and files of `paths` (default: the search
    roots), and for a run spec file given by name, every task it references, with its role there.
    A run spec found in a folder is not a task, and is skipped."""
    out: list[Entry] = []
    for p in paths or [None]:
        try:  # a built-in name: `agnostic`, `squad`
            p = p if p is None or p.exists() else find_run(str(p))
        except MetaptError as e:  # no such file or name: listed, with the close names
            out.append((p.stem, p, e, None))
            continue
        try:
            run = p is not None and p.is_file() and is_run_spec(read_toml(p))
        except MetaptError:  # not readable: listed below, with why
            run = False
        if not run:
            out += [(f.stem, f, None, None) for f in task_files(None if p is None else [p])]
            continue
        try:
            refs = run_references(p)
        except MetaptError as e:
            out.append((p.stem, p, e, None))
            continue
        for role, ref, found in refs:
            missing = found if isinstance(found, MetaptError) else None
            out.append((Path(ref).stem, p if missing else found, missing, {"run": str(p), "role": role}))
    return out


def describe_tasks(paths: list[Path] | None, count: bool) -> list[dict[str, Any]]:
    """One dict per task spec under `paths` (a run spec: the tasks it references, with their roles in
    `runs`); a spec or its data that fails is listed with the reason."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for stem, path, missing, used in _entries(paths):
        runs = {"runs": [used]} if used else {}
        try:
            if missing is not None:
                raise missing
            spec = parse_task(path, check_data=False)
        except MetaptError as e:
            rows.append({"name": stem, "path": str(path), "error": str(e), "invalid": True, **runs})
            continue
        if spec.name in seen:  # ./tasks shadows a built-in spec of the same name; a task used twice
            if used and used not in seen[spec.name].setdefault("runs", []):
                seen[spec.name]["runs"].append(used)
            continue
        info = KINDS[spec.kind]
        row: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind,
            "roles": list(roles(spec.kind)),
            "format": spec.data.format,
            "location": _location(spec),
            "head": spec.head.type or info.heads[0],
            "loss": spec.loss_name(),
            "metric": spec.options.get("main_metric") or info.metrics[0],
            "description": spec.description,
            "path": str(path),
            **runs,
        }
        seen[spec.name] = row
        if count:
            try:
                row["counts"] = count_examples(spec)
            except MissingDataError as e:  # not obtained yet: listed, not a failure
                row["error"] = f"data unavailable: {e}"
            except MetaptError as e:
                row["error"] = f"data unreadable: {e}"
                row["invalid"] = True
        rows.append(row)
    return rows


def invalid(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of specs that are invalid, or (with counts) whose data cannot be read."""
    return [r for r in rows if r.get("invalid")]


def _cells(r: dict[str, Any], count: bool) -> list[str]:
    """A row's cells as plain text, as the table shows them."""
    used = ", ".join(f"{u['role']} in {u['run']}" for u in r.get("runs", []))
    if "kind" not in r:
        return [r["name"], "invalid", used, r["error"].splitlines()[-1].strip(), "", ""] + (
            [""] if count else []
        )
    cells = [
        r["name"],
        r["kind"],
        used or ", ".join(r["roles"]),
        f"{r['format']}: {r['location']}",
        r["head"],
        r["loss"],
    ]
    if count:
        cells.append(", ".join(f"{k} {v}" for k, v in r.get("counts", {}).items()) or r.get("error", ""))
    return cells


def plain_lines(rows: list[dict[str, Any]], count: bool) -> list[str]:
    """Tab-separated lines, a header first: what pipes and terminals too narrow for the table get."""
    header = ["name", "kind", "roles", "data", "head", "loss"] + (["examples"] if count else [])
    return ["\t".join(cells) for cells in [header, *(_cells(r, count) for r in rows)]]


def table(rows: list[dict[str, Any]], count: bool) -> Table:
    """A rich table of `describe_tasks` rows; cells are plain text (a `[...]` in an error stays)."""
    t = Table(title=f"{len(rows)} tasks", show_lines=False, expand=False)
    for col in ("name", "kind", "roles", "data", "head", "loss", *(["examples"] if count else [])):
        t.add_column(col)
    for r in rows:
        cells = [Text(c) for c in _cells(r, count)]
        if "kind" not in r:
            cells[1].stylize("red")
        elif count and "counts" not in r:
            cells[-1].stylize("yellow")
        t.add_row(*cells)
    return t

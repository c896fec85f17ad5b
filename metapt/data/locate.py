"""Where a split's files are: a file, a folder (the files of the split's format), or a glob of either;
a split with nothing there is a MissingDataError saying what it looked for, what is near, and how to
get the data."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from metapt.errors import DataError, MissingDataError
from metapt.spec import DataSpec
from metapt.validation import missing_data

# The file names each format reads when a split names a folder: README, LICENSE and the like are
# skipped (an explicitly named file or a glob of files is read whatever its name). .gz is allowed.
NAMES: dict[str, str] = {
    "json": r"\.json",
    "squad": r"\.json",
    "spert": r"\.json",
    "jsonl": r"\.jsonl?",
    "nq": r"\.jsonl?",
    "superglue": r"\.jsonl?",
    "dygie": r"\.jsonl?",
    "csv": r"\.csv",
    "tsv": r"\.tsv",
    "parquet": r"\.parquet",
    "text": r"\.(txt|tokens|raw|text)",
    "dailydialog": r"\.txt",
    "conll2005": r"\.(props|words|txt|conll)|-set",
    "conll2012": r"_conll",
    "conll04": r"\.corp",
}


def resolve_files(location: str, fmt: str = "") -> list[Path]:
    """A file, a folder (its files of format `fmt`, sorted, recursively; hidden ones skipped), or a
    glob of either."""
    path = Path(location)
    if path.is_file():
        return [path]
    names = re.compile(f"(?:{NAMES[fmt]})(?:\\.gz)?$") if fmt in NAMES else None
    found: list[Path] = []
    skipped: list[str] = []
    for match in [path] if path.is_dir() else [Path(p) for p in sorted(glob.glob(location, recursive=True))]:
        if match.is_file():
            found.append(match)
        elif match.is_dir():  # a folder (or a glob matching folders): its files, hidden ones skipped
            inside = [p for p in sorted(match.rglob("*")) if p.is_file()]
            visible = [
                p for p in inside if not any(part.startswith(".") for part in p.relative_to(match).parts)
            ]
            found += [p for p in visible if names is None or names.search(p.name)]
            skipped += [
                str(p.relative_to(match)) for p in visible if names is not None and not names.search(p.name)
            ]
    if not found and skipped:
        raise DataError(
            f"{location}: no {fmt} files in this folder (names ending in {NAMES[fmt]}, optionally .gz); "
            f"it holds {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}"
        )
    if not found:
        raise MissingDataError(f"nothing at {location}")
    return found


def split_files(data: DataSpec, split: str) -> list[Path]:
    location = data.location(split)
    if location:
        try:
            return resolve_files(location, data.format)
        except MissingDataError:
            pass  # reported below with the split, the format and how to fix it
    obtain = f" {data.obtain}" if data.obtain else ""
    at = location or f"(no path: [data].{split} is not set)"
    others = [f"{s} at {data.location(s)}" for s in missing_data(data) if s != split]
    also = f" Also missing: {'; '.join(others)}." if others else ""
    # The built-in specs' obtain lines already offer --data (with what it takes there): say it once.
    fix = f"Or edit [data].{split}." if "--data" in obtain else f"Pass --data PATH or edit [data].{split}."
    raise MissingDataError(
        f"task data: split {split!r} of format {data.format!r}: nothing at {at}.{also}{_nearest(location)}"
        f"{obtain} {fix}"
    )


def _nearest(location: str) -> str:
    """What the deepest existing folder above a missing path holds: a copy in another layout shows here."""
    folder = Path(location).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    if folder == folder.parent:
        return ""
    names = sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith(".")
    )
    if not names:
        return f" {folder}/ is empty."
    return f" {folder}/ holds {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}."

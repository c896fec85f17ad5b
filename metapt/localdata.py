"""`--data PATH`: point a task at a local copy of its data without editing its spec."""

from __future__ import annotations

import dataclasses
import glob
import itertools
import re
from pathlib import Path

from metapt.errors import MetaptError
from metapt.spec import LOCAL_FORMATS, DataSpec, TaskSpec
from metapt.validation import missing_data

# The words that name each split in a file or folder name: Hugging Face datasets' SPLIT_KEYWORDS
# (datasets/data_files.py), plus the CoNLL releases' devel/ and development/ folders.
KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val", "devel", "development"),
    "test": ("test", "testing", "eval", "evaluation"),
}
CANONICAL = {word: split for split, words in KEYWORDS.items() for word in words}
# What separates words in a name, as datasets' NON_WORDS_CHARS: "dev.tsv", "squad-dev-v2.0.json",
# "conll04_train.json" name a split; "devil.txt", "contest.txt" do not.
_SEPARATORS = re.compile(r"[-._ \d]+")
# Words that tell a file's type, not which variant of a split it holds.
_TYPE_WORDS = {"json", "jsonl", "tsv", "csv", "parquet", "txt", "arrow", "gz", "bz", "xz", "zst", "zip"}
# Code and notes beside the data (a test.py, an eval.sh) are never a split.
_NOT_DATA = {".py", ".sh", ".md", ".ipynb", ".lock", ".log"}

BY_EXTENSION = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
# Hub datasets whose local copies are in a format of their own, not told by the file extension.
BY_DATASET = {"super_glue": "superglue", "squad": "squad", "squad_v2": "squad"}
# The files a local copy of each hub dataset comes as (by their extension, .gz aside), and whether
# files of another type still do when they have the spec's columns (GLUE's are read by extension;
# SuperGLUE's and SQuAD's by a format of their own): a copy of another dataset (SuperGLUE's RTE
# JSON lines for GLUE's rte) is named as such, not as a column error.
HUB_FILES = {
    "glue": (
        (".tsv", ".parquet"),
        True,
        "GLUE's TSV files (train.tsv, dev.tsv, as download_glue_data.py writes them)",
    ),
    "super_glue": ((".jsonl", ".json"), False, "SuperGLUE's JSON lines files (train.jsonl, val.jsonl)"),
    "squad": ((".json",), False, "SQuAD's JSON files (train-v1.1.json, dev-v1.1.json)"),
    "squad_v2": ((".json",), False, "SQuAD 2.0's JSON files (train-v2.0.json, dev-v2.0.json)"),
}
_KIND_OF_FILE = {".tsv": "TSV", ".csv": "CSV", ".jsonl": "JSON lines", ".json": "JSON", ".parquet": "parquet"}


def _words(name: str) -> list[str]:
    """The words of a file or folder name, lower-cased."""
    return [w for w in _SEPARATORS.split(name.lower()) if w]


def names_split(name: str, split: str) -> bool:
    """Whether a file or folder name has a word naming the split (train, dev, valid, test ...)."""
    return any(w in KEYWORDS[split] for w in _words(name))


def _canonical(name: str) -> list[str]:
    """A name's words without its type words, a split word read as the split: dev_matched.tsv and
    validation_matched both read ["validation", "matched"]."""
    return [CANONICAL.get(w, w) for w in _words(name) if w not in _TYPE_WORDS]


def _variant(have: list[str], want: list[str], split: str) -> bool:
    """Whether `have` is another variant of the split `want` names: the same words up to the split's
    word and different ones after it (test.brown for test.wsj, dev_mismatched for dev_matched)."""
    if split not in want or len(have) != len(want) or have == want:
        return False
    at = want.index(split)
    return at + 1 < len(want) and have[: at + 1] == want[: at + 1]


def _same_but_counter(a: str, b: str) -> bool:
    """Whether two names differ only in one zero-padded counter: shards of one split
    (train-00000-of-00002.parquet and train-00001-of-00002.parquet, nq-dev-00 ... nq-dev-04), not
    versions (dev-v1.1.json, dev-v2.0.json) nor years (dev-2019.json, dev-2020.json): the smaller of
    the two counters starts with a 0, as the first shard's does."""
    pa, pb = re.split(r"(\d+)", a), re.split(r"(\d+)", b)
    if len(pa) != len(pb):
        return False
    diff = [i for i, (x, y) in enumerate(zip(pa, pb, strict=True)) if x != y]
    if len(diff) != 1 or diff[0] % 2 == 0:
        return False
    x, y = pa[diff[0]], pb[diff[0]]
    return len(x) == len(y) >= 2 and min(x, y).startswith("0")


def _shard_glob(paths: list[Path]) -> str:
    """A glob matching exactly these shards: their counter as [0-9] of its width, the rest escaped."""
    parts, other = re.split(r"(\d+)", paths[0].name), re.split(r"(\d+)", paths[1].name)
    at = next(i for i, (x, y) in enumerate(zip(parts, other, strict=True)) if x != y)
    name = "".join("[0-9]" * len(p) if i == at else glob.escape(p) for i, p in enumerate(parts))
    return str(paths[0].parent / name)


def _candidates(folder: Path, split: str) -> dict[str, tuple[str, list[str]]]:
    """Name -> (location, canonical words) of each entry of `folder` naming the split; the shards of
    one name are one entry, a glob."""
    hits = sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix not in _NOT_DATA and names_split(p.name, split)
    )
    groups: list[list[Path]] = []
    for p in hits:
        group = next((g for g in groups if _same_but_counter(g[0].name, p.name)), None)
        if group:
            group.append(p)
        else:
            groups.append([p])
    found = {}
    for g in groups:
        location = str(g[0]) if len(g) == 1 else _shard_glob(g)
        found[Path(location).name] = (location, _canonical(g[0].name))
    return found


def _match(folder: Path, split: str, named: str = "", task: str = "") -> str:
    """The entry of `folder` for the split (a glob for shards); "" when none names it. Of several,
    the one the spec's own name for the split picks (`named`: CoNLL-2005's test.wsj beside
    test.brown, MNLI's validation_matched for dev_matched.tsv beside dev_mismatched.tsv); else a
    MetaptError naming them all, as for a lone entry that is clearly another variant of `named`."""
    found = _candidates(folder, split)
    if not found:
        return ""
    if named in found:
        return found[named][0]
    want = _canonical(named) if named else []
    same = [n for n, (_, words) in found.items() if want and words == want]
    if len(same) == 1:
        return found[same[0]][0]
    others = same or [n for n, (_, words) in found.items() if not _variant(words, want, split)]
    if not others:
        raise MetaptError(
            f"--data {folder}: task {task!r} reads {named!r} as its {split} split, but the folder "
            f"has only {', '.join(found)} for it, another variant; add {named}, or write a task spec "
            f"whose [data].{split} names the file to read"
        )
    if len(others) == 1:
        return found[others[0]][0]
    raise MetaptError(
        f"--data {folder}: {' and '.join(others)} {'both' if len(others) == 2 else 'all'} name the "
        f"{split} split of task {task!r}; keep one of them in the folder, or write a task spec "
        f"whose [data].{split} names the file to read"
    )


def _format(spec: TaskSpec, path: Path) -> str:
    if spec.data.format in LOCAL_FORMATS:
        return spec.data.format
    if spec.data.format == "hf" and spec.data.dataset.rsplit("/", 1)[-1] in BY_DATASET:
        return BY_DATASET[spec.data.dataset.rsplit("/", 1)[-1]]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    # The split files tell the format, not a LICENSE.txt or readme.txt beside them (GLUE's STS-B).
    inside = {f: f.relative_to(path).parts if path.is_dir() else (f.name,) for f in files}
    in_splits = [f for f in files if any(names_split(part, s) for part in inside[f] for s in KEYWORDS)]
    for f in in_splits + files:
        if f.suffix in BY_EXTENSION:
            return BY_EXTENSION[f.suffix]
    raise MetaptError(
        f"--data {path}: cannot tell the format of a local copy of task {spec.name!r} "
        f"(its spec reads format {spec.data.format!r}); use files ending in "
        f"{', '.join(BY_EXTENSION)} or write a task spec with [data].format"
    )


def with_local_data(spec: TaskSpec, path: Path) -> TaskSpec:
    """The spec reading `path`: a file becomes the train split; the entries of a folder whose names
    have a split's word (train, dev, validation, test ...: `_match`) become the splits (or, with
    none, the whole folder is the train split)."""
    path = Path(path).absolute()
    if not path.exists():
        raise MetaptError(f"--data {path}: no such file or folder")
    fmt = _format(spec, path)
    if path.is_file():
        splits = {"train": str(path), "validation": "", "test": ""}
    else:
        splits = _split_entries(spec, path)
    _hub_files(spec, path, splits)
    data = dataclasses.replace(spec.data, format=fmt, base_dir="/", dataset="", **splits)
    if fmt == "nq":  # said before finetune asks for the train or validation split it lacks
        _no_nq_open(data)
    return dataclasses.replace(spec, data=data)


def _split_entries(spec: TaskSpec, path: Path) -> dict[str, str]:
    """Split -> entry of a folder (`_match`). A clone of a hub dataset's repository keeps its split
    files one level down, in data/ or in a folder named for the subset (nyu-mll/glue's rte/); with
    no split at the top they are read from there, and with none at all the folder is the train split."""
    for folder in (path, path / "data", path / spec.data.subset if spec.data.subset else None):
        if folder is None or not folder.is_dir():
            continue
        splits = {s: _match(folder, s, Path(getattr(spec.data, s)).name, spec.name) for s in KEYWORDS}
        if any(splits.values()):
            return splits
    return {"train": str(path), "validation": "", "test": ""}


def _hub_files(spec: TaskSpec, path: Path, splits: dict[str, str]) -> None:
    """MetaptError when the split files of a hub task's local copy are not the files that dataset
    comes as (nor, for GLUE, files with the spec's columns): what was expected, and what is there."""
    dataset = spec.data.dataset.rsplit("/", 1)[-1] if spec.data.format == "hf" else ""
    if dataset not in HUB_FILES:
        return
    suffixes, by_columns, expected = HUB_FILES[dataset]
    found = [
        Path(f) for loc in splits.values() if loc for f in ([loc] if Path(loc).exists() else glob.glob(loc))
    ]
    other = [f for f in found if f.is_file() and _suffix(f) not in suffixes]
    columns = _columns(other[0]) if other else None
    if not other or (by_columns and (columns is None or _has_columns(spec, columns))):
        return  # the reader reports an empty or unreadable file itself
    kinds = sorted({_KIND_OF_FILE.get(_suffix(f), "other") for f in other})
    holding = f", with the columns {', '.join(columns)}" if columns else ""
    raise MetaptError(
        f"--data {path}: task {spec.name!r} reads {expected}; the {'folder' if path.is_dir() else 'file'} "
        f"has {', '.join(f.name for f in other)} ({' and '.join(kinds)}{holding}) instead. Point --data at "
        "such files, or write a task spec whose [data] names these files, their format and [data.columns]"
    )


def _suffix(path: Path) -> str:
    return Path(path.name.removesuffix(".gz")).suffix


def _columns(path: Path) -> list[str] | None:
    """The column names on the first line of a JSON lines or CSV/TSV file; None when not told there."""
    from metapt.data.files import json_lines, numbered_lines

    suffix = _suffix(path)
    if suffix == ".jsonl":
        first = next(iter(json_lines(path)), (0, None))[1]
        return list(first) if isinstance(first, dict) else None
    if suffix in (".csv", ".tsv"):
        line = next(iter(numbered_lines(path)), (0, ""))[1].lstrip("\ufeff")
        return [c.strip('"') for c in line.split("," if suffix == ".csv" else "\t")] if line else None
    return None


def _has_columns(spec: TaskSpec, columns: list[str]) -> bool:
    """Whether every [data.columns] role of the spec names a column (or one of its alternatives) there."""
    return all(
        any(c in columns for c in ([source] if isinstance(source, str) else source))
        for source in spec.data.columns.values()
    )


def _no_nq_open(data: DataSpec) -> None:
    """DataError when the first line of a located `nq` file is an NQ-open record."""
    from metapt.data.files import json_lines
    from metapt.data.locate import resolve_files
    from metapt.data.qa import not_nq_open

    for split in data.splits():
        for path in resolve_files(data.location(split), data.format):
            for n, example in itertools.islice(json_lines(path), 1):
                not_nq_open(path, n, example)


def without_missing_test(spec: TaskSpec) -> tuple[TaskSpec, str]:
    """The spec without a local test split that matches no file, and a warning saying so ("" when
    none was dropped): train and validation are enough to finetune and choose the best epoch, and
    public copies often lack the test file (SpERT's conll04_test.json)."""
    if "test" not in missing_data(spec.data):
        return spec, ""
    warning = f"no test split: nothing at {spec.data.location('test')}; scored on validation only"
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, test="")), warning

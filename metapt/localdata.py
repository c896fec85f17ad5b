"""`--data PATH`: point a task at a local copy of its data without editing its spec."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

from metapt.errors import MetaptError
from metapt.spec import LOCAL_FORMATS, DataSpec, TaskSpec
from metapt.validation import missing_data

# File or folder name prefixes of each split, as the public datasets name them.
PREFIXES = {
    "train": ("train",),
    "validation": ("dev", "val", "valid", "validation", "devel", "development"),
    "test": ("test",),
}
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


def _names_split(name: str, split: str) -> bool:
    """Whether a file or folder name has a word naming the split (train, dev, valid, test ...)."""
    return bool(set(re.split(r"[._\-\d]+", name.lower())) & set(PREFIXES[split]))


def _match(folder: Path, split: str, named: str = "") -> str:
    """The entries of `folder` whose name has a word naming the split (train, dev, valid, test ...);
    of several, the one the spec's own path for the split ends in (`named`: CoNLL-2005's test.wsj,
    not test.brown beside it), else all of them."""
    hits = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and _names_split(p.name, split))
    if not hits:
        return ""
    if len(hits) == 1:
        return str(hits[0])
    same = [p for p in hits if named and p.name == named]
    return str(same[0]) if same else str(folder / _common(hits))


def _common(paths: list[Path]) -> str:
    """A glob matching every path (their common name prefix, then *)."""
    names = [p.name for p in paths]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix + "*"


def _format(spec: TaskSpec, path: Path) -> str:
    if spec.data.format in LOCAL_FORMATS:
        return spec.data.format
    if spec.data.format == "hf" and spec.data.dataset.rsplit("/", 1)[-1] in BY_DATASET:
        return BY_DATASET[spec.data.dataset.rsplit("/", 1)[-1]]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    # The split files tell the format, not a LICENSE.txt or readme.txt beside them (GLUE's STS-B).
    inside = {f: f.relative_to(path).parts if path.is_dir() else (f.name,) for f in files}
    in_splits = [f for f in files if any(_names_split(part, s) for part in inside[f] for s in PREFIXES)]
    for f in in_splits + files:
        if f.suffix in BY_EXTENSION:
            return BY_EXTENSION[f.suffix]
    raise MetaptError(
        f"--data {path}: cannot tell the format of a local copy of task {spec.name!r} "
        f"(its spec reads format {spec.data.format!r}); use files ending in "
        f"{', '.join(BY_EXTENSION)} or write a task spec with [data].format"
    )


def with_local_data(spec: TaskSpec, path: Path) -> TaskSpec:
    """The spec reading `path`: a file becomes the train split; a folder's train*/dev*|val*/test*
    entries become the splits (or, with none, the whole folder is the train split); of several
    entries for one split, the one named as in the spec."""
    path = Path(path).absolute()
    if not path.exists():
        raise MetaptError(f"--data {path}: no such file or folder")
    fmt = _format(spec, path)
    if path.is_file():
        splits = {"train": str(path), "validation": "", "test": ""}
    else:
        splits = {s: _match(path, s, Path(getattr(spec.data, s)).name) for s in PREFIXES}
        if not any(splits.values()):
            splits = {"train": str(path), "validation": "", "test": ""}
    data = dataclasses.replace(spec.data, format=fmt, base_dir="/", dataset="", **splits)
    if fmt == "nq":  # said before finetune asks for the train or validation split it lacks
        _no_nq_open(data)
    return dataclasses.replace(spec, data=data)


def _no_nq_open(data: DataSpec) -> None:
    """DataError when the first line of a located `nq` file is an NQ-open record."""
    from metapt.data.files import json_lines
    from metapt.data.qa import not_nq_open
    from metapt.data.readers import resolve_files

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

"""Records -> cached features for each task (and their batches, in batches.py).

Features are cached on disk (Arrow, via `datasets`) under a key of everything that shapes them:
the data's files, the tokenizer, the kind's settings and the label vocabulary; a second run loads
them instead of tokenising again. Batches of the features are drawn in batches.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import datasets

from metapt import outdir
from metapt.data import sums
from metapt.errors import MetaptError
from metapt.spec import TaskSpec

log = logging.getLogger("metapt")
ENCODE_VERSION = 3  # bump when a kind's features change (2: sentence_distance rows name their document;
# 3: span_selection takes no sentence-opening common word for a name)


@dataclass
class TaskData:
    """A task ready to train or score: its spec, facts (labels ...) and encoded features per split."""

    spec: TaskSpec
    info: dict[str, Any]
    features: dict[str, datasets.Dataset]
    records: dict[str, datasets.Dataset]
    warnings: list[str] = field(default_factory=list)  # e.g. labels the head cannot learn, with counts

    @property
    def name(self) -> str:
        return self.spec.name


def kind_of(spec: TaskSpec) -> Any:
    """The implementation of a task's kind."""
    from metapt.kinds import IMPLEMENTATIONS

    return IMPLEMENTATIONS[spec.kind]


@cache
def tokenizer_hash(tokenizer: Any) -> str:
    """A short fingerprint of a tokenizer's vocabulary, rules and special tokens (feature cache keys;
    ranks agreeing). The special tokens' ids count: tokenizer_config.json can map [MASK] or [PAD] to
    other ids than another tokenizer with the same tokenizer.json, and the features hold them."""
    from metapt.data.tokenizer import special_token_ids

    text = tokenizer.backend_tokenizer.to_str() + json.dumps(special_token_ids(tokenizer), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _data_key(spec: TaskSpec, split: str) -> str:
    """What identifies a split's content: its files' names, sizes and mtimes, or its hub/synthetic id."""
    data = spec.data
    if data.format == "synthetic":
        from metapt.data.synthetic import GENERATOR_VERSION

        which = data.synthetic_split(split)
        return f"synthetic:{GENERATOR_VERSION}:{data.corpus}:{data.size}:{data.eval_size}:{data.seed}:{which}"
    if data.format == "hf":
        return f"hf:{data.dataset}:{data.subset}:{getattr(data, split)}"
    from metapt.data.locate import resolve_files

    files = resolve_files(data.location(split), data.format)
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _cache_key(spec: TaskSpec, split: str, tokenizer: Any, info: dict) -> str:
    parts = {
        "v": ENCODE_VERSION,
        "kind": spec.kind,
        "data": asdict(spec.data),
        "options": spec.options,
        "batch": asdict(spec.batch),
        "head": spec.head.type,
        "info": info,
        "split": split,
        "content": _data_key(spec, split),
        "tokenizer": tokenizer_hash(tokenizer),
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def features_dir() -> Path:
    """Where encoded features are cached (beside the synthetic data, moved by METAPT_CACHE)."""
    from metapt.data.synthetic import cache_dir

    return cache_dir() / "features"


def encode_split(
    spec: TaskSpec, records: datasets.Dataset, split: str, tokenizer: Any, info: dict
) -> datasets.Dataset:
    """The split's features, from the cache when the same inputs were encoded before."""
    if isinstance(records, datasets.IterableDataset):  # a stream is encoded as it is read, never cached
        return kind_of(spec).encode(records, tokenizer, spec, info)
    path = features_dir() / f"{spec.name}-{split}-{_cache_key(spec, split, tokenizer, info)}"
    damaged = False
    if path.is_dir():
        intact = sums.folder_intact(path)  # None: written by an older metapt, or cut short
        if intact:
            try:
                return datasets.load_from_disk(str(path))
            except Exception:  # an unreadable cache entry is rebuilt, never trusted
                intact = False
        damaged = intact is False
        log.info("feature cache at %s %s; re-encoding", path, "damaged" if damaged else "unsealed")
        # metapt's own entry, removed so that the rebuilt one can take its place below
        shutil.rmtree(path, ignore_errors=True)
    features = kind_of(spec).encode(records, tokenizer, spec, info)
    if not len(features):  # load_task says so; datasets cannot load an empty dataset it saved
        return features
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # never torch's RNG: it seeds the weights
    try:
        with outdir.writing(tmp):  # a full disk: say so (METAPT_CACHE moves the cache)
            features.save_to_disk(str(tmp))
            sums.seal_folder(tmp)  # after the entry, and renamed with it: a sealed entry is whole
    except MetaptError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(path)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    if damaged:
        log.warning("metapt: cache entry %s was damaged; rebuilt", path)
    return datasets.load_from_disk(str(path)) if path.is_dir() else features


def read_task_split(spec: TaskSpec, split: str) -> datasets.Dataset | datasets.IterableDataset:
    """One split of a task's records, checked against the fields its kind needs and reads."""
    from metapt.catalog import optional_fields, record_fields
    from metapt.data.readers import read_split

    return read_split(spec.data, split, record_fields(spec.kind, split), optional_fields(spec.kind, split))


def load_task(
    spec: TaskSpec,
    tokenizer: Any,
    splits: tuple[str, ...] = ("train",),
    info: dict | None = None,
    records: dict[str, datasets.Dataset] | None = None,
    encode: bool = True,
) -> TaskData:
    """Read, prepare and (unless `encode` is False) encode the given splits of a task.

    `info` holds the kind's facts from the train records plus "vocab_size" once a tokenizer is known;
    pass a checkpoint's saved `info` to score with the label order a head was trained with.
    """
    from metapt.data.qa import no_squad_v2

    records = records or {s: read_task_split(spec, s) for s in splits}
    _check_fields(spec, records)
    no_squad_v2(spec, records)
    if info is None:
        info = kind_of(spec).prepare(spec, records.get("train"))
        if tokenizer is not None:
            info = {**info, "vocab_size": len(tokenizer)}
    from metapt.data.labels import unknown_labels

    warnings = unknown_labels(spec, info, records)
    if not encode:
        return TaskData(spec, info, {}, records, warnings)
    features = {s: encode_split(spec, records[s], s, tokenizer, info) for s in splits}
    for s, f in features.items():
        if isinstance(f, datasets.IterableDataset):  # streamed: encoded lazily, size unknown
            continue
        if len(f) == 0:
            raise MetaptError(
                f"task {spec.name!r}: the {s} split has no usable examples after encoding "
                f"({len(records[s])} records read from {spec.data.location(s) or spec.data.format})"
            )
    return TaskData(spec, info, features, records, warnings)


def _check_fields(spec: TaskSpec, records: dict[str, Any]) -> None:
    """The fields the kind reads must be in the train and validation splits (the best epoch is chosen
    on validation's labels; test splits may lack them)."""
    from metapt.catalog import KINDS

    for split in ("train", "validation"):
        names = getattr(records.get(split), "column_names", None)
        if not names:  # absent, or a stream without known columns (checked as it is read)
            continue
        missing = [f for f in KINDS[spec.kind].fields if f not in names]
        if missing:
            raise MetaptError(
                f"task {spec.name!r}: its {spec.kind} records need the field(s) {', '.join(missing)}, but "
                f"the {split} split has the columns {', '.join(names)}; map them in [data.columns], e.g. "
                f'{missing[0]} = "{names[0]}"'
            )

"""Seeded synthetic corpora about one small world, written once in real file formats and cached.

Every corpus of the same seed describes the same world (metapt/data/world.py): `documents`, `articles`
(the documents with titles and entity spans), `dialogues`, `squad`, `pairs`, `conll04` and `conll2012`
state its facts, `shuffled` has its words but no facts, and `claims` asks whether facts are true without
stating them (knowledge only the sources give), and `types` asks what kind of thing a word of the world
is (metapt/data/lexicon.py). The writers are in synthetic_text.py and synthetic_conll.py.
The files are read back by the same readers as real data, so the synthetic path tests them too.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

from metapt.data import sums
from metapt.data import world as W
from metapt.data.synthetic_conll import write_conll04, write_conll2012
from metapt.data.synthetic_text import (
    Job,
    write_articles,
    write_claims,
    write_dialogues,
    write_documents,
    write_pairs,
    write_shuffled,
    write_squad,
    write_types,
)
from metapt.errors import DataError

log = logging.getLogger("metapt")
GENERATOR_VERSION = 2  # bump whenever the bytes written change: it is part of the cache path
SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------- registry, cache
# fmt: off
WRITERS: dict[str, Callable[[Job], str]] = {
    "documents": write_documents, "shuffled": write_shuffled, "dialogues": write_dialogues,
    "conll04": write_conll04, "conll2012": write_conll2012, "pairs": write_pairs, "squad": write_squad,
    "articles": write_articles,
    "claims": write_claims, "types": write_types,
}
# corpus -> (format name the readers know, file extension)
CORPUS_FORMATS: dict[str, tuple[str, str]] = {
    "documents": ("text", "txt"), "shuffled": ("text", "txt"), "dialogues": ("dailydialog", "txt"),
    "conll04": ("conll04", "corp"), "conll2012": ("conll2012", "gold_conll"), "pairs": ("tsv", "tsv"),
    "squad": ("squad", "json"), "articles": ("jsonl", "jsonl"), "claims": ("tsv", "tsv"),
    "types": ("tsv", "tsv"),
}
# fmt: on


def cache_dir() -> Path:
    """$METAPT_CACHE if set, else $XDG_CACHE_HOME/metapt, else ~/.cache/metapt."""
    if os.environ.get("METAPT_CACHE"):
        return Path(os.environ["METAPT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg, "metapt") if xdg else Path.home() / ".cache" / "metapt"


def split_count(size: int, split: str, eval_size: int = 0) -> int:
    """Examples in a split: `size` for train; `eval_size`, or a fifth of `size` (at least one), for
    validation and test."""
    return size if split == "train" else eval_size or max(1, size // 5)


def generate(corpus: str, size: int, seed: int, split: str, eval_size: int = 0) -> tuple[str, Path]:
    """Write (once; cached) the corpus split in its real format and return (format name, file path)."""
    if corpus not in CORPUS_FORMATS:
        raise DataError(f"unknown synthetic corpus {corpus!r}; allowed: {', '.join(CORPUS_FORMATS)}")
    if split not in SPLITS or size < 1 or seed < 0:
        raise DataError(
            f"synthetic {corpus}: need split in {SPLITS}, size >= 1 and seed >= 0; "
            f"got split={split!r}, size={size}, seed={seed}"
        )
    fmt, ext = CORPUS_FORMATS[corpus]
    path = (
        cache_dir()
        / "synthetic"
        / f"v{GENERATOR_VERSION}"
        / f"{corpus}-seed{seed}-size{size}{f'-eval{eval_size}' if eval_size else ''}-{split}.{ext}"
    )
    intact = sums.file_intact(path) if path.exists() else None  # None: unsealed (older metapt, a crash)
    if intact:
        return fmt, path
    rng = random.Random(f"metapt:{seed}:{corpus}:{split}")
    count, eval_count = split_count(size, split, eval_size), split_count(size, "validation", eval_size)
    job = Job(W.build_world(seed), rng, seed, corpus, split, size, count, eval_count)
    data = WRITERS[corpus](job).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    sums.write_atomically(path, data)
    sums.seal_file(path)  # after the file: a file without its sum is rebuilt, never trusted
    if intact is False:
        log.warning("metapt: cache entry %s was damaged; rebuilt", path)
    return fmt, path

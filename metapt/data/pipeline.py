"""Records -> cached features -> an endless, resumable stream of batches for each task.

Features are cached on disk (Arrow, via `datasets`) under a key of everything that shapes them:
the data's files, the tokenizer, the kind's settings and the label vocabulary; a second run loads
them instead of tokenising again. A `BatchStream` draws batches in a seeded order that depends
only on (seed, task, counters), so a resumed or distributed run sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import datasets
import torch

from metapt import outdir
from metapt.data import sums
from metapt.distributed import shard
from metapt.errors import MetaptError
from metapt.spec import TaskSpec

log = logging.getLogger("metapt")
ENCODE_VERSION = 2  # bump when a kind's features change (2: sentence_distance rows name their document)


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


def stable_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's hash() differs between processes)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


_seed = stable_seed  # the old name, imported by issue 13's heldout.py until it moves to stable_seed


class BatchStream:
    """Endless batches of one task's features in a seeded order; resumable from `state_dict()`.

    With `world` > 1 every rank draws and collates the same global batch of `batch_size` examples (so
    masks, shuffles and negatives are drawn as one process draws them) and keeps its contiguous share
    of the examples (`distributed.shard`): K processes see what one process would. Kinds whose
    examples interact (in-batch negatives: `micro_batches` False) keep the whole batch on every rank.
    """

    def __init__(
        self,
        task: TaskData,
        tokenizer: Any,
        batch_size: int,
        seed: int,
        salt: str,
        rank: int = 0,
        world: int = 1,
        split: str = "train",
    ):
        self.task, self.tokenizer, self.batch_size = task, tokenizer, batch_size
        self.features = task.features[split]
        self.seed, self.salt, self.rank, self.world = seed, salt, rank, world
        self.kind = kind_of(task.spec)
        self.sharded = _sharded(task.spec, world)
        self.epoch, self.position, self.count = 0, 0, 0
        self._start()

    def _start(self) -> None:
        """Begin the current pass (after construction or a restored state)."""
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(stable_seed(self.seed, self.task.name, self.salt, self.epoch))
        return torch.randperm(len(self.features), generator=g).tolist()

    def _indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = self._order[self.position : self.position + self.batch_size - len(out)]
            out += take
            self.position += len(take)
        return out

    def next(self) -> dict[str, torch.Tensor]:
        """The next batch (this rank's share of it)."""
        idx = self._indices()
        cols = self.features[idx]
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
        return self._collate(rows)

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The global batch collated with the global seed, then cut to this rank's share: a row's
        draws (masks, negatives) and the padded width do not depend on the number of processes."""
        g = torch.Generator().manual_seed(
            stable_seed(self.seed, self.task.name, self.salt, "batch", self.count)
        )
        self.count += 1
        batch = self.kind.collate(rows, self.tokenizer, self.task.spec, self.task.info, g)
        return shard(batch, self.rank, self.world) if self.sharded else batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.count = state["epoch"], state["position"], state["count"]
        self._start()


class StreamingBatchStream(BatchStream):
    """Batches of a streamed (larger than memory) corpus: a seeded shuffle buffer per pass, resumed by
    skipping the examples already consumed in the current pass."""

    BUFFER = 10_000

    def _start(self) -> None:
        self._rows = self._pass()

    def _pass(self) -> Any:
        order = self.features.shuffle(
            seed=stable_seed(self.seed, self.task.name, self.salt, self.epoch), buffer_size=self.BUFFER
        )
        return iter(order.skip(self.position) if self.position else order)

    def _indices(self) -> list[int]:  # not used: rows come from the stream itself
        raise NotImplementedError

    def next(self) -> dict[str, torch.Tensor]:
        rows: list[dict] = []
        while len(rows) < self.batch_size:
            try:
                rows.append(next(self._rows))
                self.position += 1
            except StopIteration:
                if self.position == 0:
                    raise MetaptError(f"task {self.task.name!r}: the stream yielded no examples") from None
                self.epoch, self.position = self.epoch + 1, 0
                self._rows = self._pass()
        return self._collate(rows)


def _sharded(spec: TaskSpec, world: int) -> bool:
    """Whether K > 1 ranks split this task's batches (not when its examples interact)."""
    from metapt.catalog import KINDS

    return world > 1 and KINDS[spec.kind].micro_batches


def stream_for(
    task: TaskData, tokenizer: Any, batch_size: int, seed: int, salt: str, rank: int = 0, world: int = 1
) -> BatchStream:
    """A batch stream over a task's train features, streamed or in memory."""
    cls = (
        StreamingBatchStream if isinstance(task.features["train"], datasets.IterableDataset) else BatchStream
    )
    return cls(task, tokenizer, batch_size, seed, salt, rank, world)


def train_size(task: TaskData) -> int:
    """Training examples (for proportional sampling); a stream reports its split size when known, else 1."""
    features = task.features["train"]
    if not isinstance(features, datasets.IterableDataset):
        return len(features)
    split = (features.info.splits or {}).get("train") if features.info else None
    return int(split.num_examples) if split is not None and split.num_examples else 1


def eval_batches(task: TaskData, tokenizer: Any, split: str, batch_size: int) -> Any:
    """The split's features in order, in batches, each with the rows it came from."""
    features = task.features[split]
    kind = kind_of(task.spec)
    for start in range(0, len(features), batch_size):
        cols = features[start : start + batch_size]
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
        g = torch.Generator().manual_seed(stable_seed("eval", task.name, split, start))
        yield rows, kind.collate(rows, tokenizer, task.spec, task.info, g)

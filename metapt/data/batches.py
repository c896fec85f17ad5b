"""Batches of a task's features: an endless `BatchStream` in a seeded order that depends only on
(seed, task, counters), so a resumed or distributed run sees exactly the same batches; a streamed
corpus's shuffle buffer; and a split's evaluation batches in order."""

from __future__ import annotations

import zlib
from typing import Any

import datasets
import torch

from metapt.data.pipeline import TaskData, kind_of
from metapt.distributed import shard
from metapt.errors import MetaptError
from metapt.spec import TaskSpec


def stable_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's hash() differs between processes)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


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

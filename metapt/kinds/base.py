"""The contract every task kind implements: data in, batches out, a head, predictions, metrics.

A kind module (metapt/kinds/<kind>.py) defines module-level functions with these names and
signatures (one it shares with another kind is bound to the name: `collate = word_tags.collate`) and
is listed in `metapt.kinds.IMPLEMENTATIONS` as `Kind.of(module)`. Records are what the readers produce (field
names fixed per kind, see metapt/catalog.py `fields`); features are tokenised rows (plain lists
of ints, so they live in a `datasets.Dataset` and are cached); batches are dicts of tensors.

Batch keys every kind provides: "input_ids" (N, T) and "attention_mask" (N, T); optionally
"token_type_ids" (N, T). N is the number of encoder sequences, which may differ from the number
of examples B (response selection encodes 2B sequences, multiple choice B*C). Everything else
(labels, positions, masks) is kind-specific and read only by the kind's head, loss and predict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import torch
from torch import nn

from metapt.spec import TaskSpec

Batch = dict[str, torch.Tensor]
Info = dict[str, Any]  # JSON-serialisable task facts (label names, ...) saved with the head


@dataclass(frozen=True)
class Kind:
    """One task kind's functions. See the module docstring for what each must do."""

    # Facts from the train records (labels ...); JSON-serialisable, stored in checkpoints.
    prepare: Callable[[TaskSpec, datasets.Dataset | None], Info]
    # Records -> feature rows (tokenised). Must be a pure function of its inputs (it is cached).
    encode: Callable[[datasets.Dataset, Any, TaskSpec, Info], datasets.Dataset]
    # Feature rows -> a batch; all randomness (masking, shuffles, negatives) from `generator`.
    collate: Callable[[list[dict], Any, TaskSpec, Info, torch.Generator], Batch]
    # A head module: forward(hidden (N, T, H), batch, embedding_weight (V, H)) -> logits.
    head: Callable[[int, TaskSpec, Info], nn.Module]
    # Per-example predictions from logits, moved to plain Python values (one per example).
    predict: Callable[[torch.Tensor, Batch, Info], list[Any]]
    # Metrics over a whole split: (predictions in feature order, features, records) ->
    # ({metric: value}, per-record predictions ready for writing).
    score: Callable[
        [list[Any], datasets.Dataset, datasets.Dataset, TaskSpec, Info], tuple[dict[str, float], list[Any]]
    ]
    # Write per-record predictions in the field's own format (CoNLL props, SQuAD JSON, ...).
    write_predictions: Callable[[Path, list[Any], datasets.Dataset, Info], None]

    @classmethod
    def of(cls, module: ModuleType) -> Kind:
        """The kind a module defines: its functions named as this contract's fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        if missing := [n for n in names if not callable(getattr(module, n, None))]:
            raise TypeError(f"{module.__name__} lacks the kind function(s) {', '.join(missing)}")
        return cls(**{n: getattr(module, n) for n in names})

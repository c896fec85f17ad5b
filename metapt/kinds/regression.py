"""Sentence and sentence-pair regression (STS-B): a real-valued score per record, Pearson and Spearman.

Records, features and prediction files as classification's (metapt/kinds/classification.py), with
float labels: an unlabelled record (None or "", test splits) gets NaN and leaves the metrics out.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds import classification
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs
from metapt.kinds.corpus import build_head, map_records
from metapt.metrics import regression_scores
from metapt.spec import TaskSpec

write_predictions = classification.write_predictions  # a GLUE submission TSV, as classification's


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn: a regressor has one output."""
    return {}


def _float_label(value: Any) -> float:
    """A regression label as a float; NaN when unlabelled (None or "")."""
    return math.nan if value is None or value == "" else float(value)


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Records -> {"input_ids", "token_type_ids", "labels": float score, NaN when unlabelled}."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        out = classification.tokenize_texts(batch, tokenizer, spec.batch.max_length)
        labels = batch["label"] if "label" in batch else [None] * len(batch["text"])  # unlabelled test split
        out["labels"] = [_float_label(v) for v in labels]
        return out

    return map_records(records, fn)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T); labels (B,) float."""
    return {
        **feature_inputs(rows, tokenizer.pad_token_id),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.float),
    }


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A pooled regressor with one output."""
    return build_head(hidden_size, spec, 1)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[float]:
    """The (B,) predicted scores."""
    return logits.float().tolist()


def score(
    predictions: list[float],
    features: datasets.Dataset,
    records: datasets.Dataset,
    spec: TaskSpec,
    info: Info,
) -> tuple[dict[str, float], list[float]]:
    """pearson and spearman over the labelled records (a split whose labels are all -1 is unlabelled)."""
    gold = [_float_label(v) for v in classification.gold_labels(records)]
    keep = [i for i, g in enumerate(gold) if not math.isnan(g)]
    if not keep or all(gold[i] == -1 for i in keep):
        return {}, predictions
    return regression_scores([predictions[i] for i in keep], [gold[i] for i in keep]), predictions

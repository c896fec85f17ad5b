"""Sentence and sentence-pair classification: GLUE, SuperGLUE (regression, STS-B: metapt/kinds/regression.py).

One feature per record: the tokenizer's [CLS] text [SEP] (text_pair [SEP]), cut to max_length
longest part first. Classification labels become ids of info["labels"]; unlabelled records
(label -1, "" or None: test splits) get -100 and leave the metrics out. MultiRC records carry a
"group" (their question), which adds SuperGLUE's f1a and exact_match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.errors import DataError
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs
from metapt.kinds.corpus import build_head, map_records
from metapt.kinds.labelled import (
    IGNORE,
    UNLABELLED,
    label_ids,
    label_names,
    label_str,
    record_ids,
    token_types,
)
from metapt.metrics import classification_scores, multirc_scores
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"labels": option `labels`, else the sorted distinct train labels as strings}."""
    values = train["label"] if train is not None and "label" in train.column_names else []
    names = label_names(spec, values)
    if not names:
        raise DataError(
            f"task {spec.name!r}: no label names; set [options].labels or give a train "
            "split with labelled records"
        )
    return {"labels": names}


def tokenize_texts(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """input_ids and token_type_ids per row: pairs where text_pair is non-empty, single texts elsewhere."""
    n = len(batch["text"])
    pairs = batch.get("text_pair") or [None] * n
    ids: list[Any] = [None] * n
    types: list[Any] = [None] * n
    for paired in (False, True):  # one tokenizer call per shape keeps the map batched
        rows = [i for i in range(n) if bool(pairs[i]) == paired]
        if not rows:
            continue
        texts = [batch["text"][i] or "" for i in rows]
        args = (texts, [pairs[i] for i in rows]) if paired else (texts,)
        enc = tokenizer(*args, truncation=True, max_length=max_length, return_token_type_ids=True)
        for k, i in enumerate(rows):
            ids[i] = enc["input_ids"][k]
            types[i] = token_types(tokenizer, enc["token_type_ids"][k])
    return {"input_ids": ids, "token_type_ids": types}


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Records -> {"input_ids", "token_type_ids", "labels": label id, -100 when unlabelled}."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        out = tokenize_texts(batch, tokenizer, spec.batch.max_length)
        labels = batch["label"] if "label" in batch else [-1] * len(batch["text"])  # unlabelled test split
        out["labels"] = label_ids(info["labels"], labels, spec.name)
        return out

    return map_records(records, fn)


def gold_labels(records: Any) -> list[Any]:
    """Gold labels of a split; a split without a label column (GLUE test files) is unlabelled."""
    return records["label"] if "label" in records.column_names else [None] * len(records)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T); labels (B,) long."""
    return {
        **feature_inputs(rows, tokenizer.pad_token_id),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
    }


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A pooled classifier over info["labels"]."""
    return build_head(hidden_size, spec, len(info["labels"]))


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[int]:
    """The arg-max label id of each (B, L) row."""
    return logits.argmax(-1).tolist()


def score(
    predictions: list[int], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[str]]:
    """accuracy, f1 (of the second label; two labels only), macro_f1, mcc and, with "group", f1a and
    exact_match, over the labelled records; a gold label outside info["labels"] counts as wrong.
    Per-record predictions are label names."""
    names = info["labels"]
    index = {n: i for i, n in enumerate(names)}
    gold = [IGNORE if v in UNLABELLED else index.get(label_str(v), len(names)) for v in gold_labels(records)]
    keep = [i for i, g in enumerate(gold) if g != IGNORE]
    written = [names[p] for p in predictions]
    if not keep:
        return {}, written
    preds, labels = [predictions[i] for i in keep], [gold[i] for i in keep]
    wanted = ["accuracy", "f1", "macro_f1", "mcc"] if len(names) == 2 else ["accuracy", "macro_f1", "mcc"]
    metrics = classification_scores(preds, labels, wanted)
    if "group" in records.column_names:  # MultiRC: answer options grouped by question
        groups = records["group"]
        metrics |= multirc_scores(preds, labels, [groups[i] for i in keep])
    return metrics, written


def write_predictions(path: Path, predictions: list[Any], records: datasets.Dataset, info: Info) -> None:
    """A GLUE submission TSV: header `index<TAB>prediction`, then `id<TAB>label` per record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for rid, p in zip(record_ids(records), predictions, strict=True):
            f.write(f"{rid}\t{p!r}\n" if isinstance(p, float) else f"{rid}\t{p}\n")

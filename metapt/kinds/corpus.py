"""Pieces the kinds share: the head builder and batched record mapping (all kinds); sentences of a
document, batched tokenisation and JSON-lines predictions (the corpus-based source kinds)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.catalog import KINDS
from metapt.kinds.base import Batch
from metapt.kinds.common import encoder_inputs, join, write_jsonl
from metapt.kinds.heads import HEADS
from metapt.metrics import accuracy
from metapt.spec import TaskSpec

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# English function words: never a span-selection term, an entity or a phrase word, or a key word.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours out over own same she should so some such than that the their
theirs them then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yes one two many much may might must shall upon yet""".split()
)


def sentences_of(sentences: list[str] | None, text: str | None) -> list[str]:
    """A document's non-empty sentences: its `sentences`, else `text` split after . ! or ?."""
    if sentences:
        return [s for s in sentences if s and s.strip()]
    return [s for s in _SENTENCE_END.split(text or "") if s.strip()]


def documents(batch: dict[str, list]) -> list[list[str]]:
    """The sentences of every record in a batched-map batch (records have `sentences` and/or `text`)."""
    n = len(next(iter(batch.values())))
    sents, texts = batch.get("sentences") or [None] * n, batch.get("text") or [None] * n
    return [sentences_of(s, t) for s, t in zip(sents, texts, strict=True)]


def tokenize_nested(tokenizer: Any, groups: list[list[str]]) -> list[list[list[int]]]:
    """Token ids (no special tokens) of every string in every group, in one tokenizer call."""
    flat = [s for g in groups for s in g]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, i = [], 0
    for g in groups:
        out.append(ids[i : i + len(g)])
        i += len(g)
    return out


def chunk_sentences(sentences: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive sentences grouped so each group has at most `budget` tokens (long ones are cut), so
    a whole group fits one sequence and no shuffled or paired segment is lost to truncation."""
    chunks: list[list[list[int]]] = [[]]
    used = 0
    for s in sentences:
        s = s[:budget]
        if chunks[-1] and used + len(s) > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(s)
        used += len(s)
    return [c for c in chunks if c]


def columns(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    """Column names, also for a streaming dataset whose features are not known up front."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def map_records(dataset: Any, fn: Callable[[dict[str, list]], dict[str, list]]) -> Any:
    """Records -> feature rows by a batched map that drops the record columns (rows may multiply)."""
    return dataset.map(fn, batched=True, remove_columns=columns(dataset))


def document_id(sentences: list[str]) -> int:
    """A document's identity, from its text: the rows cut from one document share it (also when
    encoded in different map batches or streamed), so no pair of them counts as two documents."""
    return zlib.crc32("\n".join(sentences).encode("utf-8"))


def sentence_features(
    dataset: Any, tokenizer: Any, budget: int, min_sentences: int, with_document: bool = False
) -> Any:
    """Documents -> rows {"sentences": token ids per sentence (and "document": its document_id when
    `with_document`)}, chunked to `budget` tokens per row; rows with fewer than `min_sentences`
    sentences are dropped."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        rows, ids = [], []
        docs = documents(batch)
        for sentences, doc in zip(docs, tokenize_nested(tokenizer, docs), strict=True):
            kept = [c for c in chunk_sentences([s for s in doc if s], budget) if len(c) >= min_sentences]
            rows += kept
            ids += [document_id(sentences)] * len(kept)
        return {"sentences": rows, "document": ids} if with_document else {"sentences": rows}

    return map_records(dataset, fn)


def build_head(hidden_size: int, spec: TaskSpec, num_labels: int) -> nn.Module:
    """The spec's head, or the kind's default head, for `num_labels` outputs."""
    return HEADS[spec.head.type or KINDS[spec.kind].heads[0]](hidden_size, num_labels, spec.head.dropout)


@cache
def special_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the tokenizer's special tokens ([CLS], [SEP], [PAD], [MASK], ...)."""
    return tuple(sorted(set(tokenizer.all_special_ids)))


def write_rows(path: Path, predictions: list[Any], records: Any, info: dict) -> None:
    """One JSON line per prediction (source kinds predict per feature row, not per record)."""
    write_jsonl(path, predictions)


# pair(rows, i, wanted class, generator) -> (first ids, second ids, the class it could give)
Pair = Callable[[list[dict], int, int, torch.Generator], tuple[list[int], list[int], int]]


def collate_drawn_pairs(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, generator: torch.Generator, pair: Pair, num_labels: int
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T): [CLS] a [SEP] b [SEP]; labels (B,): balanced,
    classes 0, 1, ..., 0, 1, ... handed out to the rows in a random order, each row's pair drawn for
    its class (sentence distance, IR relevance)."""
    wanted = [c % num_labels for c in torch.randperm(len(rows), generator=generator).tolist()]
    ids, types, labels = [], [], []
    for i, c in enumerate(wanted):
        a, b, label = pair(rows, i, c, generator)
        x, t = join(tokenizer, a, b, spec.batch.max_length)
        ids.append(x)
        types.append(t)
        labels.append(label)
    batch = encoder_inputs(ids, types, tokenizer.pad_token_id)
    batch["labels"] = torch.tensor(labels)
    return batch


def predict_drawn_class(logits: torch.Tensor, batch: dict[str, torch.Tensor], info: dict) -> list[dict]:
    """Per example {"predicted": class, "label": the class collate drew} (sentence reordering and
    distance draw their labels in collate, so the gold travels with the prediction)."""
    return [
        {"predicted": p, "label": y}
        for p, y in zip(logits.argmax(-1).tolist(), batch["labels"].tolist(), strict=True)
    ]


def score_drawn_class(
    predictions: list[dict], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: dict
) -> tuple[dict[str, float], list[dict]]:
    """{"accuracy": % of examples whose drawn class was predicted}."""
    preds, golds = [p["predicted"] for p in predictions], [p["label"] for p in predictions]
    return {"accuracy": accuracy(preds, golds)}, predictions

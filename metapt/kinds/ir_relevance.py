"""ERNIE 2.0 IR relevance (semantic-aware): is a passage strongly relevant (0), weakly relevant (1) or
not relevant (2) to a query? ERNIE pairs search queries with clicked, shown and random titles; on a
corpus the query is a document's title (the record's `title` field: WikiText headings, Wikipedia
titles), or its first sentence where there is none, and the passages are the rest of the document
cut into runs of `passage_sentences` sentences:

- strong: the document's first passage (where an article says what its title is),
- weak:   one of its later passages,
- none:   a passage of another document in the batch (one with a different query).

Pairs are drawn fresh in every collate, classes balanced per batch. Documents with fewer than two
passages cannot offer a weak pair and are dropped.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.corpus import (
    build_head,
    collate_drawn_pairs,
    documents,
    map_records,
    predict_drawn_class,
    score_drawn_class,
    tokenize_nested,
    write_rows,
)
from metapt.spec import TaskSpec

STRONG, WEAK, NONE = 0, 1, 2
NUM_LABELS = 3
_MAX_PASSAGES = 16  # passages kept per document: rows stay small, "later part" still spans far


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": 3}."""
    return {"num_labels": NUM_LABELS}


def query_and_passages(title: str | None, sentences: list[str], size: int) -> tuple[str, list[str]] | None:
    """(query, passages in document order): the title and all sentences, or without a title the
    first sentence and the rest; None when there is nothing to pair."""
    if title and title.strip():
        query, rest = title.strip(), sentences
    elif sentences:
        query, rest = sentences[0], sentences[1:]
    else:
        return None
    return query, [" ".join(rest[i : i + size]) for i in range(0, len(rest), size)][:_MAX_PASSAGES]


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> rows {"query": token ids (at most half a sequence), "passages": token ids per
    passage (at most a sequence)}; documents with fewer than two passages are dropped."""
    L, size = spec.batch.max_length, spec.option("passage_sentences")

    def fn(batch: dict[str, list]) -> dict[str, list]:
        docs = documents(batch)
        titles = batch.get("title") or [None] * len(docs)
        groups = []
        for title, sentences in zip(titles, docs, strict=True):
            found = query_and_passages(title if isinstance(title, str) else None, sentences, size)
            if found is not None and len(found[1]) >= 2:
                groups.append([found[0], *found[1]])
        out: dict[str, list] = {"query": [], "passages": []}
        for ids in tokenize_nested(tokenizer, groups):
            out["query"].append(ids[0][: L // 2])
            out["passages"].append([p[:L] for p in ids[1:]])
        return out

    return map_records(dataset, fn)


def _draw(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (), generator=generator))


def pair(
    rows: list[dict], i: int, wanted: int, generator: torch.Generator
) -> tuple[list[int], list[int], int]:
    """(query, passage, class) for row i; "none" falls back to strong when no other row has a
    different query (a batch of one document)."""
    query, passages = rows[i]["query"], rows[i]["passages"]
    others = [j for j, r in enumerate(rows) if r["query"] != query]
    if wanted == NONE and others:
        theirs = rows[others[_draw(len(others), generator)]]["passages"]
        return query, theirs[_draw(len(theirs), generator)], NONE
    if wanted == WEAK and len(passages) >= 2:
        return query, passages[1 + _draw(len(passages) - 1, generator)], WEAK
    return query, passages[0], STRONG


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T): [CLS] query [SEP] passage [SEP]; labels (B,), the
    classes balanced per batch."""
    return collate_drawn_pairs(rows, tokenizer, spec, generator, pair, NUM_LABELS)


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A pooled 3-way classifier."""
    return build_head(hidden_size, spec, NUM_LABELS)


# collate draws the class, so the gold label travels with the prediction
predict, score = predict_drawn_class, score_drawn_class
write_predictions = write_rows  # one JSON line per feature row

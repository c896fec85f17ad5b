"""ERNIE 2.0 sentence distance: is a sentence pair adjacent (0), from the same document but apart (1),
or from two documents (2)? Pairs are drawn fresh in every collate, classes balanced per batch."""

from __future__ import annotations

from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.corpus import (
    build_head,
    collate_drawn_pairs,
    predict_drawn_class,
    score_drawn_class,
    sentence_features,
    write_rows,
)
from metapt.spec import TaskSpec

ADJACENT, SAME_DOCUMENT, OTHER_DOCUMENT = 0, 1, 2
NUM_LABELS = 3
# Long documents are kept in pieces of this many sequences' worth of tokens: a row stays small
# while "same document" still spans far more than one sequence.
_PIECE = 8


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": 3}."""
    return {"num_labels": NUM_LABELS}


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> rows {"sentences": token ids per sentence, "document": its id}; documents of one
    sentence are dropped (every row must offer an adjacent pair)."""
    return sentence_features(dataset, tokenizer, _PIECE * spec.batch.max_length, 2, with_document=True)


def _draw(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (), generator=generator))


def pair(
    rows: list[dict], i: int, wanted: int, generator: torch.Generator
) -> tuple[list[int], list[int], int]:
    """(sentence a, sentence b, class) for row i; a class the row cannot offer (no third sentence, no
    row of another document in the batch) falls back to adjacent."""
    sents = rows[i]["sentences"]
    n = len(sents)
    if wanted == SAME_DOCUMENT and n >= 3:
        # The r-th of the (n-1)(n-2)/2 pairs j < k - 1, in document order: uniform over pairs.
        r, j = _draw((n - 1) * (n - 2) // 2, generator), 0
        while r >= n - j - 2:
            r -= n - j - 2
            j += 1
        return sents[j], sents[j + 2 + r], SAME_DOCUMENT
    # A long document is cut into several rows: only a row of another document is "other".
    others = [j for j, r in enumerate(rows) if r["document"] != rows[i]["document"]]
    if wanted == OTHER_DOCUMENT and others:
        theirs = rows[others[_draw(len(others), generator)]]["sentences"]
        return sents[_draw(n, generator)], theirs[_draw(len(theirs), generator)], OTHER_DOCUMENT
    j = _draw(n - 1, generator)
    return sents[j], sents[j + 1], ADJACENT


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T): [CLS] a [SEP] b [SEP]; labels (B,), the
    classes balanced per batch."""
    return collate_drawn_pairs(rows, tokenizer, spec, generator, pair, NUM_LABELS)


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A pooled 3-way classifier."""
    return build_head(hidden_size, spec, NUM_LABELS)


# collate draws the class, so the gold label travels with the prediction
predict, score = predict_drawn_class, score_drawn_class
write_predictions = write_rows  # one JSON line per feature row

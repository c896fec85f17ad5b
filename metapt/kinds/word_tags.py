"""Per-token binary tags, shared by the word-aware source kinds (capitalization prediction,
token-document relation) and replaced token detection: sequences whose tagged tokens carry label
0 or 1 (-100 elsewhere), a 2-way token classifier, and F1 of class 1 / accuracy over tagged tokens.

A word is what WORD matches in the raw text: a run of letters and digits (with inner - or '), or
one punctuation mark. A word's label sits on its first sub-word token, found by the tokenizer's
character offsets, so any fast tokenizer (WordPiece, byte-level BPE) aligns the same way.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs, join, pad
from metapt.kinds.corpus import build_head
from metapt.kinds.labelled import IGNORE
from metapt.metrics import accuracy, binary_f1
from metapt.spec import TaskSpec

NUM_LABELS = 2
WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


def words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of `text`."""
    return [(m.start(), m.end()) for m in WORD.finditer(text)]


def lowercase(text: str) -> str:
    """`text` lowercased character by character, keeping its length (so offsets still hold)."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def tag_units(
    tokenizer: Any, units: list[str], labels: list[list[int]], lower: bool
) -> list[tuple[list[int], list[int]]]:
    """Per text unit: (token ids without special tokens, per-token labels): the label of word k
    (labels[unit][k], words as `words` finds them) on its first token, IGNORE on the others."""
    if not units:
        return []
    enc = tokenizer(
        [lowercase(u) if lower else u for u in units], add_special_tokens=False, return_offsets_mapping=True
    )
    out = []
    for unit, ids, offsets, word_labels in zip(
        units, enc["input_ids"], enc["offset_mapping"], labels, strict=True
    ):
        spans = words(unit)
        starts = [a for a, _ in spans]
        tags, last = [], -1
        for a, b in offsets:
            k = bisect.bisect_right(starts, a) - 1
            inside = k >= 0 and a < spans[k][1] and b > a
            tags.append(word_labels[k] if inside and k != last else IGNORE)
            last = k if inside else last
        out.append((ids, tags))
    return out


def pack(units: list[tuple[list[int], list[int]]], budget: int) -> list[tuple[list[int], list[int]]]:
    """Consecutive units joined while they fit `budget` tokens (a longer unit is cut to it)."""
    rows: list[tuple[list[int], list[int]]] = []
    for ids, tags in units:
        ids, tags = ids[:budget], tags[:budget]
        if rows and len(rows[-1][0]) + len(ids) <= budget:
            rows[-1] = (rows[-1][0] + ids, rows[-1][1] + tags)
        else:
            rows.append((ids, tags))
    return [r for r in rows if r[0]]


def rows_of(tokenizer: Any, pieces: list[tuple[list[int], list[int]]], max_length: int) -> dict[str, list]:
    """Feature columns {"input_ids": [CLS] ids [SEP], "labels": IGNORE at the special tokens}."""
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for ids, tags in pieces:
        full = join(tokenizer, ids, None, max_length)[0]
        out["input_ids"].append(full)
        out["labels"].append([IGNORE, *tags[: len(full) - 2], IGNORE])
    return out


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask, labels (N, T); labels -100 at untagged tokens."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    batch["labels"] = pad([r["labels"] for r in rows], IGNORE)
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A 2-way per-token classifier."""
    return build_head(hidden_size, spec, NUM_LABELS)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[dict]:
    """Per sequence {"predicted", "labels"}: the classes at its tagged tokens, in order."""
    best = logits.argmax(-1).tolist()  # (N, T)
    out = []
    for row, gold in zip(best, batch["labels"].tolist(), strict=True):
        keep = [t for t, y in enumerate(gold) if y != IGNORE]
        out.append({"predicted": [row[t] for t in keep], "labels": [gold[t] for t in keep]})
    return out


def score(
    predictions: list[dict], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[dict]]:
    """{"f1": F1 of class 1 (%), "accuracy": % of tagged tokens right}."""
    pred = [p for x in predictions for p in x["predicted"]]
    gold = [y for x in predictions for y in x["labels"]]
    return {"f1": binary_f1(pred, gold), "accuracy": accuracy(pred, gold)}, predictions

"""Helpers the labelled (target) kinds share: label vocabularies, word -> sub-word alignment for
taggers and record ids."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import datasets
import torch

from metapt.catalog import KINDS
from metapt.kinds.common import pad
from metapt.spec import TaskSpec

LOG = logging.getLogger("metapt")
IGNORE = -100  # label id the losses skip
UNLABELLED = (None, "", -1, "-1")  # label values of unlabelled (test) records


def _name_order(name: str) -> tuple[int, float, str]:
    """Sort key: numeric names by value ("2" before "10"), then the others alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def label_str(value: Any) -> str:
    """A label value as its name: 1, "1" and 1.0 are all "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def label_names(spec: TaskSpec, values: Iterable[Any]) -> list[str]:
    """The option `labels` when set, else the sorted distinct label values (as strings)."""
    given = spec.option("labels") if "labels" in KINDS[spec.kind].options else []
    if given:
        return [str(x) for x in given]
    return sorted({label_str(v) for v in values if v not in UNLABELLED}, key=_name_order)


def label_ids(names: list[str], values: Iterable[Any], what: str) -> list[int]:
    """Label values -> ids; unlabelled and unknown values get -100 (unknown ones are logged)."""
    index = {n: i for i, n in enumerate(names)}
    out, unknown = [], set()
    for v in values:
        if v in UNLABELLED:
            out.append(IGNORE)
        elif label_str(v) in index:
            out.append(index[label_str(v)])
        else:
            unknown.add(label_str(v))
            out.append(IGNORE)
    if unknown:
        LOG.warning(
            "%s: labels not in the label set %s are ignored by the loss: %s", what, names, sorted(unknown)
        )
    return out


def token_types(tokenizer: Any, types: list[int]) -> list[int]:
    """Segment ids, or zeros for tokenizers without them (RoBERTa has a single token type)."""
    return types if "token_type_ids" in tokenizer.model_input_names else [0] * len(types)


def record_ids(records: datasets.Dataset) -> list[str]:
    """Each record's "id", or its row number when the data has none."""
    if "id" in records.column_names:
        return [str(i) if i not in (None, "") else str(n) for n, i in enumerate(records["id"])]
    return [str(n) for n in range(len(records))]


# ------------------------------------------------------------------------- tagging (BIO) helpers
def align(
    word_ids: list[int | None], sequence_ids: list[int | None], word_labels: list[int]
) -> tuple[list[int], list[int]]:
    """Per sub-word of the first segment: the word's label on its first sub-word, -100 elsewhere;
    and the word index on first sub-words, -1 elsewhere. Returns (labels, word_index)."""
    labels, index, previous = [], [], None
    for w, s in zip(word_ids, sequence_ids, strict=True):
        first = w is not None and s == 0 and w != previous
        labels.append(word_labels[w] if first else IGNORE)
        index.append(w if first else -1)
        previous = w if s == 0 else None
    return labels, index


def words_cut(word_index: list[int], num_words: int) -> int:
    """Words after the last one that kept a sub-word (cut by max_length)."""
    return num_words - (max(word_index, default=-1) + 1)


def tag_batch(rows: list[dict], keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tagger batch fields: labels (N, T) padded -100, word_index (N, T) padded -1, num_words (N,),
    plus 0-padded per-token `keys` (N, T)."""
    batch = {
        "labels": pad([r["labels"] for r in rows], IGNORE),
        "word_index": pad([r["word_index"] for r in rows], -1),
        "num_words": torch.tensor([r["num_words"] for r in rows], dtype=torch.long),
    }
    for key in keys:
        batch[key] = pad([r[key] for r in rows], 0)
    return batch


def repair_bio(tags: list[str]) -> list[str]:
    """Make a tag sequence valid BIO: an I-X that does not continue an X span becomes B-X."""
    out: list[str] = []
    for tag in tags:
        if tag.startswith("I-") and (not out or out[-1] == "O" or out[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def decode_words(logits: torch.Tensor, batch: dict[str, torch.Tensor], names: list[str]) -> list[list[str]]:
    """Word-level BIO tags per sequence from (N, T, L) logits: each word takes its first sub-word's
    prediction; words cut by max_length are "O"; the result is repaired to valid BIO."""
    best = logits.argmax(-1).cpu().tolist()  # (N, T)
    index = batch["word_index"].cpu().tolist()
    out = []
    for row, words, n in zip(best, index, batch["num_words"].cpu().tolist(), strict=True):
        tags = ["O"] * n
        for label, w in zip(row, words, strict=True):
            if w >= 0:
                tags[w] = names[label]
        out.append(repair_bio(tags))
    return out

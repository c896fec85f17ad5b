"""ERNIE 2.0 capitalization prediction (word-aware): the encoder reads lowercased text and predicts,
per word, whether the word was capitalised (first character upper case) in the raw text.

Labels are computed on the raw text; the input is lowercased by metapt itself (character by
character, so offsets hold), also with a cased tokenizer, where the task would otherwise be
trivial. Words without a cased letter (numbers, punctuation) get no label. A document's sentences
are packed into sequences of up to max_length tokens (a longer sentence is cut).
"""

from __future__ import annotations

from typing import Any

import datasets

from metapt.kinds import word_tags
from metapt.kinds.base import Info
from metapt.kinds.corpus import documents, map_records, write_rows
from metapt.kinds.labelled import IGNORE
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": 2}."""
    return {"num_labels": word_tags.NUM_LABELS}


def capitalised(sentence: str) -> list[int]:
    """Per word of the raw sentence: 1 capitalised, 0 not, IGNORE without a cased letter."""
    out = []
    for a, b in word_tags.words(sentence):
        word = sentence[a:b]
        out.append(IGNORE if word.lower() == word.upper() else int(word[0].isupper()))
    return out


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> rows {"input_ids": [CLS] lowercased sentences [SEP], "labels": 1 / 0 on the
    first token of each cased word, -100 elsewhere}."""
    L = spec.batch.max_length

    def fn(batch: dict[str, list]) -> dict[str, list]:
        pieces = []
        for sentences in documents(batch):
            tagged = word_tags.tag_units(
                tokenizer, sentences, [capitalised(s) for s in sentences], lower=True
            )
            pieces += word_tags.pack(tagged, L - 2)
        return word_tags.rows_of(tokenizer, pieces, L)

    return map_records(dataset, fn)


# Everything after encoding is word_tags' (per-token binary tags).
collate, head, predict, score = word_tags.collate, word_tags.head, word_tags.predict, word_tags.score
write_predictions = write_rows  # one JSON line per feature row

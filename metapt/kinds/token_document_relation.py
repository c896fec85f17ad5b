"""ERNIE 2.0 token-document relation (word-aware): for each word of a segment, predict whether it
also occurs in another segment of the same document (ERNIE's signal for a document's key words).

A segment is `segment_sentences` consecutive sentences of a document and is one sequence (cut to
max_length). Words are compared lowercased; punctuation gets no label, nor do stop words unless
`ignore_stopwords = false`. Documents of a single segment have no other segment and are dropped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets

from metapt.kinds import word_tags
from metapt.kinds.base import Info
from metapt.kinds.corpus import STOPWORDS, documents, map_records, write_rows
from metapt.kinds.labelled import IGNORE
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": 2}."""
    return {"num_labels": word_tags.NUM_LABELS}


def segments_of(sentences: list[str], size: int) -> list[str]:
    """The document cut into segments of `size` consecutive sentences."""
    return [" ".join(sentences[i : i + size]) for i in range(0, len(sentences), size)]


def recurring(segments: list[str], ignore_stopwords: bool) -> list[list[int]]:
    """Per segment, per word: 1 if the (lowercased) word occurs in another segment, else 0; IGNORE
    for punctuation and, when `ignore_stopwords`, stop words."""
    keys = [[s[a:b].lower() for a, b in word_tags.words(s)] for s in segments]
    count = Counter(k for ks in keys for k in set(ks))  # segments containing each word
    return [
        [
            IGNORE
            if not any(c.isalnum() for c in k) or ignore_stopwords and k in STOPWORDS
            else int(count[k] >= 2)  # this segment and at least one other
            for k in ks
        ]
        for ks in keys
    ]


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> one row per segment {"input_ids": [CLS] segment [SEP], "labels": 1 / 0 on the
    first token of each labelled word, -100 elsewhere}."""
    L, size, skip = spec.batch.max_length, spec.option("segment_sentences"), spec.option("ignore_stopwords")

    def fn(batch: dict[str, list]) -> dict[str, list]:
        pieces = []
        for sentences in documents(batch):
            segments = segments_of(sentences, size)
            if len(segments) < 2:
                continue
            tagged = word_tags.tag_units(tokenizer, segments, recurring(segments, skip), lower=False)
            pieces += [(ids[: L - 2], tags[: L - 2]) for ids, tags in tagged if ids]
        return word_tags.rows_of(tokenizer, pieces, L)

    return map_records(dataset, fn)


# Everything after encoding is word_tags' (per-token binary tags).
collate, head, predict, score = word_tags.collate, word_tags.head, word_tags.predict, word_tags.score
write_predictions = write_rows  # one JSON line per feature row

"""ERNIE 2.0 sentence reordering: a document cut into k shuffled segments; name the permutation.

Classes enumerate the permutations of 1..max_segments segments, k = 1 first, each k in
itertools.permutations order: label = sum_{j<k} j! + rank of the permutation. A permutation `perm`
means the input shows segment perm[0] first, then perm[1], ... (for max_segments 3: 1+2+6 = 9).
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.common import encoder_inputs, join
from metapt.kinds.corpus import (
    build_head,
    predict_drawn_class,
    score_drawn_class,
    sentence_features,
    write_rows,
)
from metapt.spec import TaskSpec


@cache
def permutations(max_segments: int) -> tuple[tuple[int, ...], ...]:
    """Every class's permutation, in label order."""
    return tuple(p for k in range(1, max_segments + 1) for p in itertools.permutations(range(k)))


@cache
def _labels(max_segments: int) -> dict[tuple[int, ...], int]:
    return {p: i for i, p in enumerate(permutations(max_segments))}


def num_classes(max_segments: int) -> int:
    """sum over k = 1..max_segments of k!."""
    return sum(math.factorial(k) for k in range(1, max_segments + 1))


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": sum of k! for k = 1..max_segments}."""
    return {"num_labels": num_classes(spec.option("max_segments"))}


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> rows {"sentences": token ids per sentence}, a long document cut into runs of
    sentences that fit max_length, so no shuffled segment is truncated away."""
    return sentence_features(dataset, tokenizer, spec.batch.max_length - 2, min_sentences=1)


def shuffle_segments(
    sentences: list[list[int]], max_segments: int, generator: torch.Generator
) -> tuple[list[int], tuple[int, ...]]:
    """Cut the sentences into k (uniform in 1..min(max_segments, n)) runs at random sentence
    boundaries and shuffle them; returns (the shuffled token ids, the permutation)."""
    n = len(sentences)
    k = 1 + int(torch.randint(min(max_segments, n), (), generator=generator))
    cuts = sorted(1 + i for i in torch.randperm(n - 1, generator=generator)[: k - 1].tolist())
    bounds = [0, *cuts, n]
    segments = [[t for s in sentences[a:b] for t in s] for a, b in itertools.pairwise(bounds)]
    perm = tuple(torch.randperm(k, generator=generator).tolist())
    return [t for j in perm for t in segments[j]], perm


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T): the shuffled document; labels (B,)."""
    m = spec.option("max_segments")
    ids, labels = [], []
    for row in rows:
        shuffled, perm = shuffle_segments(row["sentences"], m, generator)
        ids.append(join(tokenizer, shuffled, None, spec.batch.max_length)[0])
        labels.append(_labels(m)[perm])
    batch = encoder_inputs(ids, [[0] * len(r) for r in ids], tokenizer.pad_token_id)
    batch["labels"] = torch.tensor(labels)
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A pooled classifier over the permutations."""
    return build_head(hidden_size, spec, num_classes(spec.option("max_segments")))


# collate draws the class, so the gold label travels with the prediction
predict, score = predict_drawn_class, score_drawn_class
write_predictions = write_rows  # one JSON line per feature row

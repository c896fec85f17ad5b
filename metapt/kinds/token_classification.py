"""BIO token classification (NER): a per-token tagger scored by conlleval entity F1.

One feature per sentence, tokenised word by word (`is_split_into_words`): a word's label sits on its
first sub-word and the other sub-words get -100. Words past max_length are cut (counted and
logged); their predicted tag is "O". Predictions are repaired to valid BIO (an I-X that does not
continue an X span becomes B-X), which is also how conlleval reads such a tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.errors import DataError
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs, write_jsonl
from metapt.kinds.corpus import build_head, map_records
from metapt.kinds.labelled import (
    LOG,
    align,
    decode_words,
    label_ids,
    label_names,
    record_ids,
    tag_batch,
    token_types,
    words_cut,
)
from metapt.metrics import bio_spans, entity_scores
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"labels": option `labels`, else the sorted distinct train tags}."""
    tags = [t for row in train["tags"] for t in row] if train is not None else []
    names = label_names(spec, tags)
    if not names:
        raise DataError(f"task {spec.name!r}: no tags; set [options].labels or give a train split")
    return {"labels": names}


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Sentences -> {"input_ids", "token_type_ids", "labels" (first sub-words; -100 elsewhere),
    "word_index" (the word on first sub-words; -1 elsewhere), "num_words", "words_cut"}."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch["tokens"],
            is_split_into_words=True,
            truncation=True,
            max_length=spec.batch.max_length,
            return_token_type_ids=True,
        )
        out: dict[str, list] = {
            k: [] for k in ("input_ids", "token_type_ids", "labels", "word_index", "num_words", "words_cut")
        }
        for i, tags in enumerate(batch["tags"]):
            labels, index = align(
                enc.word_ids(i), enc.sequence_ids(i), label_ids(info["labels"], tags, spec.name)
            )
            out["input_ids"].append(enc["input_ids"][i])
            out["token_type_ids"].append(token_types(tokenizer, enc["token_type_ids"][i]))
            out["labels"].append(labels)
            out["word_index"].append(index)
            out["num_words"].append(len(tags))
            out["words_cut"].append(words_cut(index, len(tags)))
        return out

    features = map_records(records, fn)
    cut = sum(features["words_cut"])
    if cut:
        LOG.warning(
            "%s: %d words beyond max_length=%d were cut (predicted as O)",
            spec.name,
            cut,
            spec.batch.max_length,
        )
    return features


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask, labels, word_index (N, T); num_words (N,)."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    return {**batch, **tag_batch(rows)}


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A per-token tagger over info["labels"]."""
    return build_head(hidden_size, spec, len(info["labels"]))


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[list[str]]:
    """Word-level BIO tags of each sentence from (N, T, L) logits."""
    return decode_words(logits, batch, info["labels"])


def score(
    predictions: list[list[str]],
    features: datasets.Dataset,
    records: datasets.Dataset,
    spec: TaskSpec,
    info: Info,
) -> tuple[dict[str, float], list[list[str]]]:
    """conlleval entity precision, recall and F1 against the records' tags."""
    return entity_scores(predictions, records["tags"]), predictions


def write_predictions(
    path: Path, predictions: list[list[str]], records: datasets.Dataset, info: Info
) -> None:
    """JSON lines {"id", "tokens", "spans": [[label, start, end_exclusive], ...]}."""
    write_jsonl(
        path,
        (
            {"id": rid, "tokens": tokens, "spans": [list(s) for s in bio_spans(tags)]}
            for rid, tokens, tags in zip(record_ids(records), records["tokens"], predictions, strict=True)
        ),
    )

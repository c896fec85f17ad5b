"""Semantic role labelling: one instance per predicate, scored as the CoNLL srl-eval (V excluded).

Each (sentence, predicate) pair is encoded as `[CLS] sentence words [SEP] predicate word [SEP]`
(the sentence is cut first when too long) with a `predicate_mask` over the predicate's sub-words
in the sentence, which the predicate_tagger head turns into an indicator embedding. Labels sit on
each word's first sub-word. Predicted tags are repaired to valid BIO (an I-X that does not continue
an X span becomes B-X), so every prediction converts to CoNLL brackets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.brackets import bio_to_brackets
from metapt.errors import DataError
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs
from metapt.kinds.corpus import build_head
from metapt.kinds.labelled import (
    LOG,
    align,
    decode_words,
    label_ids,
    label_names,
    tag_batch,
    token_types,
    words_cut,
)
from metapt.metrics import srl_scores
from metapt.spec import TaskSpec

FIELDS = (
    "input_ids",
    "token_type_ids",
    "labels",
    "word_index",
    "predicate_mask",
    "num_words",
    "words_cut",
    "record_index",
    "predicate",
)


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"labels": option `labels`, else the sorted distinct train tags (B-V included)}."""
    tags = [t for row in train["srl_tags"] for column in row for t in column] if train is not None else []
    names = label_names(spec, tags)
    if not names:
        raise DataError(f"task {spec.name!r}: no SRL tags; set [options].labels or give a train split")
    return {"labels": names}


def _instances(batch: dict[str, list], indices: list[int]) -> list[tuple[int, list[str], int, list[str]]]:
    """(record index, tokens, predicate position, tags) per predicate of the batch's sentences."""
    out = []
    for r, tokens, predicates, columns in zip(
        indices, batch["tokens"], batch["predicate_indices"], batch["srl_tags"], strict=True
    ):
        if len(predicates) != len(columns):
            raise DataError(
                f"record {r}: {len(predicates)} predicate_indices but {len(columns)} srl_tags columns"
            )
        out += [(r, tokens, p, tags) for p, tags in zip(predicates, columns, strict=True)]
    return out


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Sentences -> one row per predicate: {"input_ids", "token_type_ids", "labels", "word_index",
    "predicate_mask" (1 on the predicate's sub-words), "num_words", "words_cut", "record_index",
    "predicate" (its word position)}."""

    def fn(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in FIELDS}
        instances = _instances(batch, indices)
        if not instances:
            return out
        enc = tokenizer(
            [t for _, t, _, _ in instances],
            [[t[p]] for _, t, p, _ in instances],
            is_split_into_words=True,
            truncation="only_first",
            max_length=spec.batch.max_length,
            return_token_type_ids=True,
        )
        for i, (r, tokens, p, tags) in enumerate(instances):
            words, segments = enc.word_ids(i), enc.sequence_ids(i)
            labels, index = align(words, segments, label_ids(info["labels"], tags, spec.name))
            out["input_ids"].append(enc["input_ids"][i])
            out["token_type_ids"].append(token_types(tokenizer, enc["token_type_ids"][i]))
            out["labels"].append(labels)
            out["word_index"].append(index)
            out["predicate_mask"].append(
                [int(w == p and s == 0) for w, s in zip(words, segments, strict=True)]
            )
            out["num_words"].append(len(tokens))
            out["words_cut"].append(words_cut(index, len(tokens)))
            out["record_index"].append(r)
            out["predicate"].append(p)
        return out

    features = records.map(fn, batched=True, with_indices=True, remove_columns=records.column_names)
    cut = sum(features["words_cut"])
    lost = sum(1 for m in features["predicate_mask"] if not any(m))
    if cut or lost:
        LOG.warning(
            "%s: %d words beyond max_length=%d were cut (predicted as O); %d predicates were cut "
            "from their sentence",
            spec.name,
            cut,
            spec.batch.max_length,
            lost,
        )
    return features


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask, labels, word_index, predicate_mask (N, T); num_words (N,)."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    return {**batch, **tag_batch(rows, keys=("predicate_mask",))}


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A tagger with a predicate-indicator embedding, over info["labels"]."""
    return build_head(hidden_size, spec, len(info["labels"]))


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[list[str]]:
    """Word-level BIO tags of each (sentence, predicate) instance from (N, T, L) logits."""
    return decode_words(logits, batch, info["labels"])


def score(
    predictions: list[list[str]],
    features: datasets.Dataset,
    records: datasets.Dataset,
    spec: TaskSpec,
    info: Info,
) -> tuple[dict[str, float], list[list[list[str]]]]:
    """srl-eval precision, recall and F1 over every proposition; per record, one tag list per predicate."""
    per_record: list[list[list[str]]] = [[] for _ in range(len(records))]
    for r, tags in zip(features["record_index"], predictions, strict=True):
        per_record[r].append(tags)
    gold = records["srl_tags"]
    pred_flat = [tags for columns in per_record for tags in columns]
    gold_flat = [tags for columns in gold for tags in columns]
    return srl_scores(pred_flat, gold_flat), per_record


def write_predictions(
    path: Path, predictions: list[list[list[str]]], records: datasets.Dataset, info: Info
) -> None:
    """CoNLL props as srl-eval.pl reads them: per token the predicate's lemma (the record's
    predicate_lemmas, else its word) or "-", and one bracket column per predicate; a blank line after
    each sentence. srl-eval.pl scores a proposition only if its verb equals the gold file's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lemmas = (
        records["predicate_lemmas"]
        if "predicate_lemmas" in records.column_names
        else [
            [tokens[p] for p in predicates]
            for tokens, predicates in zip(records["tokens"], records["predicate_indices"], strict=True)
        ]
    )
    with path.open("w", encoding="utf-8") as f:
        for tokens, predicates, verbs, columns in zip(
            records["tokens"], records["predicate_indices"], lemmas, predictions, strict=True
        ):
            brackets = [bio_to_brackets(tags) for tags in columns]
            marked = dict(zip(predicates, verbs, strict=True))
            for i in range(len(tokens)):
                f.write("\t".join([marked.get(i, "-"), *(b[i] for b in brackets)]) + "\n")
            f.write("\n")

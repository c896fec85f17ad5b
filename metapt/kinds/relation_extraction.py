"""Relation extraction over gold entities: one instance per ordered entity pair, typed entity markers.

Markers are punctuation, so no vocabulary is added (Zhou & Chen 2021, "typed entity marker
(punct)"): the head entity becomes `@ * person * Alice Moreau @` and the tail `# ^ organization ^
Acme Corp #`. The head reads the encoder states at the first "@" and the first "#". A pair whose
marker falls past max_length is dropped (counted and logged) and scores as "no_relation".
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs, write_jsonl
from metapt.kinds.corpus import build_head
from metapt.kinds.labelled import LOG, label_ids, record_ids, token_types
from metapt.metrics import relation_scores
from metapt.spec import TaskSpec

NONE = "no_relation"
FIELDS = (
    "input_ids",
    "token_type_ids",
    "head_position",
    "tail_position",
    "label",
    "record_index",
    "head_entity",
    "tail_entity",
)


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"labels": ["no_relation", *option `labels` or the sorted train relation types]}."""
    given = [str(x) for x in spec.option("labels")]
    if not given and train is not None:
        given = sorted({r["type"] for row in train["relations"] for r in row})
    return {"labels": [NONE, *(x for x in given if x != NONE)]}


def _type_words(entity_type: str) -> list[str]:
    return entity_type.lower().replace("_", " ").split()


def mark(tokens: list[str], head: dict, tail: dict) -> tuple[list[str], int, int]:
    """The sentence with typed punctuation markers around head and tail, and the word positions of
    the opening "@" and "#"."""
    opens: dict[int, list[tuple[int, list[str]]]] = {}
    closes: dict[int, list[tuple[int, str]]] = {}
    for entity, outer, inner in ((head, "@", "*"), (tail, "#", "^")):
        start, end = entity["start"], entity["end"]
        opens.setdefault(start, []).append((end - start, [outer, inner, *_type_words(entity["type"]), inner]))
        closes.setdefault(end, []).append((end - start, outer))
    words: list[str] = []
    at: dict[str, int] = {}
    for i in range(len(tokens) + 1):
        for _, close in sorted(closes.get(i, [])):  # nested spans: the inner one closes first
            words.append(close)
        for _, opening in sorted(opens.get(i, []), key=lambda x: -x[0]):  # and opens last
            at.setdefault(opening[0], len(words))
            words += opening
        if i < len(tokens):
            words.append(tokens[i])
    return words, at["@"], at["#"]


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Sentences -> one row per ordered entity pair (i != j): {"input_ids", "token_type_ids",
    "head_position", "tail_position" (sub-word index of "@" / "#"), "label", "record_index",
    "head_entity", "tail_entity" (entity indices)}."""

    def fn(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in FIELDS}
        pairs, texts, types = [], [], []
        for r, tokens, entities, relations in zip(
            indices, batch["tokens"], batch["entities"], batch["relations"], strict=True
        ):
            gold: dict[tuple[int, int], str] = {}
            for rel in relations:
                gold.setdefault((rel["head"], rel["tail"]), rel["type"])
            for i, j in permutations(range(len(entities)), 2):
                words, h, t = mark(tokens, entities[i], entities[j])
                pairs.append((r, i, j, h, t))
                texts.append(words)
                types.append(gold.get((i, j), NONE))
        if not texts:
            return out
        enc = tokenizer(
            texts,
            is_split_into_words=True,
            truncation=True,
            max_length=spec.batch.max_length,
            return_token_type_ids=True,
        )
        labels = label_ids(info["labels"], types, spec.name)
        for k, (r, i, j, h, t) in enumerate(pairs):
            words = enc.word_ids(k)
            if h not in words or t not in words:
                continue  # a marker was cut; counted in encode's summary
            out["input_ids"].append(enc["input_ids"][k])
            out["token_type_ids"].append(token_types(tokenizer, enc["token_type_ids"][k]))
            out["head_position"].append(words.index(h))
            out["tail_position"].append(words.index(t))
            out["label"].append(labels[k])
            out["record_index"].append(r)
            out["head_entity"].append(i)
            out["tail_entity"].append(j)
        return out

    features = records.map(fn, batched=True, with_indices=True, remove_columns=records.column_names)
    pairs = sum(len(e) * (len(e) - 1) for e in records["entities"])
    if len(features) < pairs:
        LOG.warning(
            "%s: %d of %d entity pairs dropped: a marker fell beyond max_length=%d",
            spec.name,
            pairs - len(features),
            pairs,
            spec.batch.max_length,
        )
    return features


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (N, T); head_positions, tail_positions, labels (N,)."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    for key, field in (
        ("head_positions", "head_position"),
        ("tail_positions", "tail_position"),
        ("labels", "label"),
    ):
        batch[key] = torch.tensor([r[field] for r in rows], dtype=torch.long)
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """An entity-pair classifier over info["labels"]."""
    return build_head(hidden_size, spec, len(info["labels"]))


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[str]:
    """The arg-max relation name of each (N, L) pair."""
    return [info["labels"][i] for i in logits.argmax(-1).tolist()]


def _span(entity: dict) -> tuple[int, int, str]:
    return (entity["start"], entity["end"], entity["type"])


def score(
    predictions: list[str], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[list[dict]]]:
    """Micro precision, recall and F1 over (head span, tail span, relation) triples per sentence,
    no_relation excluded. Per record: [{"head": [s, e, type], "tail": [...], "type"}]."""
    entities = records["entities"]
    found: list[list[dict]] = [[] for _ in range(len(records))]
    cols = zip(
        features["record_index"], features["head_entity"], features["tail_entity"], predictions, strict=True
    )
    for r, i, j, rel in cols:
        if rel != NONE:
            found[r].append(
                {"head": list(_span(entities[r][i])), "tail": list(_span(entities[r][j])), "type": rel}
            )
    pred = [{(tuple(x["head"]), tuple(x["tail"]), x["type"]) for x in rels} for rels in found]
    gold = [
        {(_span(ents[rel["head"]]), _span(ents[rel["tail"]]), rel["type"]) for rel in rels}
        for ents, rels in zip(entities, records["relations"], strict=True)
    ]
    return relation_scores(pred, gold), found


def write_predictions(
    path: Path, predictions: list[list[dict]], records: datasets.Dataset, info: Info
) -> None:
    """JSON lines {"id", "relations": [{"head": [start, end, type], "tail": [...], "type"}]}."""
    write_jsonl(
        path,
        ({"id": rid, "relations": rels} for rid, rels in zip(record_ids(records), predictions, strict=True)),
    )

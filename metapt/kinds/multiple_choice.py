"""Multiple choice (COPA, ReCoRD): one score per (context, candidate) sequence, softmax over candidates.

Each candidate is encoded as `[CLS] context [SEP] question choice [SEP]` (run_swag.py's layout);
for ReCoRD, whose query holds "@placeholder", the second part is the query with the candidate
filled in. A feature row holds all of a record's candidates; collate flattens a batch to B*C
sequences, padding records with fewer candidates by short dummy sequences that `choice_mask`
hides from the head. ReCoRD records name their gold "answers" instead of a label: the label is the
first candidate matching one (after SQuAD normalisation), and scoring uses the ReCoRD EM/F1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.common import encoder_inputs, write_jsonl
from metapt.kinds.corpus import build_head, map_records
from metapt.kinds.labelled import IGNORE, UNLABELLED, record_ids, token_types
from metapt.metrics import accuracy, normalize_answer, record_scores
from metapt.spec import TaskSpec

PLACEHOLDER = "@placeholder"


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn from the records: candidates come with each record."""
    return {}


def candidate_text(question: str | None, choice: str) -> str:
    """The second segment for one candidate: the question with the candidate filled in (ReCoRD), or
    "question choice", or the choice alone."""
    if question and PLACEHOLDER in question:
        return question.replace(PLACEHOLDER, choice)
    return f"{question} {choice}" if question else choice


def gold_choice(label: Any, choices: list[str], answers: list[str] | None) -> int:
    """The correct candidate's index: the label, or (ReCoRD) the first candidate matching an answer;
    -100 when unlabelled or when no candidate matches."""
    if answers is not None:
        gold = {normalize_answer(a) for a in answers}
        return next((i for i, c in enumerate(choices) if normalize_answer(c) in gold), IGNORE)
    return IGNORE if label in UNLABELLED else int(label)


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Records -> {"input_ids", "token_type_ids": one list per candidate, "label": gold index or -100}."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["context"])
        questions = batch.get("question") or [None] * n
        answers = batch.get("answers") or [None] * n
        labels = batch.get("label") or [None] * n
        firsts, seconds = [], []
        for context, question, choices in zip(batch["context"], questions, batch["choices"], strict=True):
            firsts += [context] * len(choices)
            seconds += [candidate_text(question, c) for c in choices]
        enc = (
            tokenizer(
                firsts, seconds, truncation=True, max_length=spec.batch.max_length, return_token_type_ids=True
            )
            if firsts
            else {"input_ids": [], "token_type_ids": []}
        )
        out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "label": []}
        at = 0
        for choices, answer, label in zip(batch["choices"], answers, labels, strict=True):
            out["input_ids"].append(enc["input_ids"][at : at + len(choices)])
            out["token_type_ids"].append(
                [token_types(tokenizer, t) for t in enc["token_type_ids"][at : at + len(choices)]]
            )
            out["label"].append(gold_choice(label, choices, answer))
            at += len(choices)
        return out

    return map_records(records, fn)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B*C, T), C = the batch's most candidates;
    choice_mask (B, C) bool, True on real candidates; labels (B,)."""
    width = max(1, max(len(r["input_ids"]) for r in rows))
    dummy = [tokenizer.cls_token_id, tokenizer.sep_token_id]  # attended, so no row is fully masked
    ids, types, mask = [], [], []
    for r in rows:
        missing = width - len(r["input_ids"])
        ids += r["input_ids"] + [dummy] * missing
        types += r["token_type_ids"] + [[0, 0]] * missing
        mask.append([True] * len(r["input_ids"]) + [False] * missing)
    batch = encoder_inputs(ids, types, tokenizer.pad_token_id)
    batch["choice_mask"] = torch.tensor(mask, dtype=torch.bool)
    batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """One score per candidate, (B, C)."""
    return build_head(hidden_size, spec, 1)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[int]:
    """The index of the best candidate in each (B, C) row."""
    return logits.argmax(-1).tolist()


def score(
    predictions: list[int], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[Any]]:
    """accuracy over labelled records; ReCoRD (records with "answers"): accuracy (the candidate is a gold
    answer), exact_match and F1 as its official script. Per record: the index, or the ReCoRD text."""
    if "answers" not in records.column_names:
        gold = [IGNORE if v in UNLABELLED else int(v) for v in records["label"]]
        keep = [i for i, g in enumerate(gold) if g != IGNORE]
        if not keep:
            return {}, predictions
        return {"accuracy": accuracy([predictions[i] for i in keep], [gold[i] for i in keep])}, predictions
    texts = [c[p] if p < len(c) else "" for c, p in zip(records["choices"], predictions, strict=True)]
    ids = record_ids(records)
    references = {qid: list(a) for qid, a in zip(ids, records["answers"], strict=True) if a}
    if not references:
        return {}, texts
    hits = [texts[n] in references[qid] for n, qid in enumerate(ids) if qid in references]
    metrics = {"accuracy": accuracy(hits, [True] * len(hits))}
    return metrics | record_scores(dict(zip(ids, texts, strict=True)), references), texts


def write_predictions(path: Path, predictions: list[Any], records: datasets.Dataset, info: Info) -> None:
    """JSON lines {"id", "prediction"}: the chosen index, or for ReCoRD the chosen entity text."""
    write_jsonl(
        path, ({"id": rid, "prediction": p} for rid, p in zip(record_ids(records), predictions, strict=True))
    )

"""Extractive QA (SQuAD, Natural Questions): a start/end pointer over document-stride windows.

Encoding follows Hugging Face's run_qa.py (prepare_train_features + prepare_validation_features in
one pass): `[CLS] question [SEP] context window [SEP]`, consecutive windows sharing `stride`
tokens. A window that does not hold the whole answer, and an unanswerable question, point at
[CLS] (start = end = 0). Each feature keeps its record index and the offsets of its context
tokens (None elsewhere), so answers map back to context characters. Questions too long to leave a
window wider than the stride are cut (counted and logged) instead of failing in the tokenizer.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.errors import MetaptError
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs
from metapt.kinds.corpus import build_head
from metapt.kinds.labelled import LOG, record_ids, token_types
from metapt.metrics import squad_scores
from metapt.spec import TaskSpec

N_BEST = 20
FIELDS = (
    "input_ids",
    "token_type_ids",
    "start_positions",
    "end_positions",
    "example_index",
    "offset_mapping",
    "question_cut",
)


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn from the records."""
    return {}


def _question_room(tokenizer: Any, spec: TaskSpec) -> int:
    """The most question tokens that leave a context window wider than the stride."""
    room = spec.batch.max_length - tokenizer.num_special_tokens_to_add(pair=True) - spec.batch.stride - 1
    if room < 1:
        raise MetaptError(
            f"task {spec.name!r}: [batch].stride = {spec.batch.stride} leaves no room for the "
            f"question in max_length = {spec.batch.max_length}; use a smaller stride"
        )
    return room


def _cut_questions(questions: list[str], tokenizer: Any, room: int) -> tuple[list[str], list[int]]:
    """Questions cut to `room` tokens (at a token's end character), and 1 where one was cut."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], []
    for q, ids, offsets in zip(questions, enc["input_ids"], enc["offset_mapping"], strict=True):
        cut.append(int(len(ids) > room))
        out.append(q[: offsets[room - 1][1]] if len(ids) > room else q)
    return out, cut


def _answer_tokens(answers: dict, offsets: list, segments: list, cls: int) -> tuple[int, int]:
    """(start, end) token of the first answer inside this window, else (cls, cls), as run_qa.py."""
    if not answers["answer_start"]:
        return cls, cls
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first = segments.index(1)
    last = len(segments) - 1 - segments[::-1].index(1)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls, cls
    while first < len(offsets) and offsets[first][0] <= start_char:
        first += 1
    while offsets[last][1] >= end_char:
        last -= 1
    return first - 1, last + 1


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Questions -> one row per context window: {"input_ids", "token_type_ids", "start_positions",
    "end_positions", "example_index", "offset_mapping" (context tokens only), "question_cut"}."""
    room = _question_room(tokenizer, spec)

    def fn(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        questions, cut = _cut_questions([q.lstrip() for q in batch["question"]], tokenizer, room)
        enc = tokenizer(
            questions,
            batch["context"],
            truncation="only_second",
            max_length=spec.batch.max_length,
            stride=spec.batch.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
        )
        out: dict[str, list] = {k: [] for k in FIELDS}
        for i, example in enumerate(enc["overflow_to_sample_mapping"]):
            ids, offsets, segments = enc["input_ids"][i], enc["offset_mapping"][i], enc.sequence_ids(i)
            start, end = _answer_tokens(
                batch["answers"][example], offsets, segments, ids.index(tokenizer.cls_token_id)
            )
            out["input_ids"].append(ids)
            out["token_type_ids"].append(token_types(tokenizer, enc["token_type_ids"][i]))
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            out["example_index"].append(indices[example])
            out["offset_mapping"].append(
                [list(o) if s == 1 else None for o, s in zip(offsets, segments, strict=True)]
            )
            out["question_cut"].append(cut[example])
        return out

    features = records.map(fn, batched=True, with_indices=True, remove_columns=records.column_names)
    cut = len(set(i for i, c in zip(features["example_index"], features["question_cut"], strict=True) if c))
    if cut:
        LOG.warning(
            "%s: %d questions longer than %d tokens were cut to leave room for the context",
            spec.name,
            cut,
            room,
        )
    return features


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (N, T); start_positions, end_positions (N,)."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    for key in ("start_positions", "end_positions"):
        batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A start/end pointer."""
    return build_head(hidden_size, spec, 2)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[dict]:
    """Per window: the N_BEST start and end candidates as [token, logit] and the [CLS] (null) score."""
    start, end = logits.float().unbind(-1)  # (N, T) each
    k = min(N_BEST, start.shape[1])
    out = []
    for s, e in zip(start, end, strict=True):
        top_s, top_e = s.topk(k), e.topk(k)
        out.append(
            {
                "start": [[i, v] for i, v in zip(top_s.indices.tolist(), top_s.values.tolist(), strict=True)],
                "end": [[i, v] for i, v in zip(top_e.indices.tolist(), top_e.values.tolist(), strict=True)],
                "null": (s[0] + e[0]).item(),
            }
        )
    return out


def best_answer(
    context: str, windows: list[tuple[dict, list]], max_answer_length: int, with_negative: bool
) -> str:
    """The best valid span over an example's windows (start <= end, inside the context, at most
    `max_answer_length` tokens); "" when none, or when the null score wins (SQuAD 2.0), as run_qa.py."""
    best, best_score, null = "", -math.inf, math.inf
    for candidates, offsets in windows:
        null = min(null, candidates["null"])
        for s, s_logit in candidates["start"]:
            for e, e_logit in candidates["end"]:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length or s_logit + e_logit <= best_score:
                    continue
                best, best_score = context[offsets[s][0] : offsets[e][1]], s_logit + e_logit
    if with_negative and null > best_score:
        return ""
    return best


def score(
    predictions: list[dict], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[str]]:
    """SQuAD exact_match and F1 of the best answer per question; questions without gold answers count
    (as no-answer) only with version_2_with_negative. Per record: the answer text."""
    windows: dict[int, list[tuple[dict, list]]] = defaultdict(list)
    for example, offsets, candidates in zip(
        features["example_index"], features["offset_mapping"], predictions, strict=True
    ):
        windows[example].append((candidates, offsets))
    negative = spec.option("version_2_with_negative")
    answers = [
        best_answer(context, windows[n], spec.option("max_answer_length"), negative)
        for n, context in enumerate(records["context"])
    ]
    ids = record_ids(records)
    references = {
        qid: list(a["text"]) for qid, a in zip(ids, records["answers"], strict=True) if a["text"] or negative
    }
    if not references:
        return {}, answers
    return squad_scores(dict(zip(ids, answers, strict=True)), references), answers


def write_predictions(path: Path, predictions: list[str], records: datasets.Dataset, info: Info) -> None:
    """The SQuAD predictions file: {id: answer text}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    answers = dict(zip(record_ids(records), predictions, strict=True))
    path.write_text(json.dumps(answers, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

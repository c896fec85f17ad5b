"""Dialogue response selection: encode the contexts and the true next turns of a batch; each context
should rank its own response first among the batch's responses (in-batch negatives)."""

from __future__ import annotations

from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.common import encoder_inputs, join
from metapt.kinds.corpus import build_head, map_records, tokenize_nested, write_rows
from metapt.metrics import accuracy
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn from the records."""
    return {}


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Dialogues -> one row per turn i >= 1: {"id": "<dialogue id>-<i>", "context": the last
    max_context_turns turns before i joined by [SEP] (oldest tokens cut first), "response": turn i}."""
    turns_kept, room = spec.option("max_context_turns"), spec.batch.max_length - 2
    sep = tokenizer.sep_token_id

    def fn(batch: dict[str, list]) -> dict[str, list]:
        dialogues = [[t for t in turns if t and t.strip()] for turns in batch["turns"]]
        ids = batch.get("id") or list(range(len(dialogues)))
        out: dict[str, list] = {"id": [], "context": [], "response": []}
        for name, turns in zip(ids, tokenize_nested(tokenizer, dialogues), strict=True):
            for i in range(1, len(turns)):
                context = [t for turn in turns[max(0, i - turns_kept) : i] for t in (*turn, sep)][:-1]
                out["id"].append(f"{name}-{i}")
                out["context"].append(context[-room:])  # the most recent turns matter most
                out["response"].append(turns[i][:room])
        return out

    return map_records(dataset, fn)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (2B, T): the B contexts, then their B responses;
    labels (B,) = 0..B-1, the diagonal of the (B, B) scores; same_response (B, B): True at [i, j],
    j != i, where response j is the same token ids as response i, so it is no negative for row i
    (short turns such as "Thank you ." recur across dialogues). No randomness.

    Training needs B >= 2 (the other responses are the negatives; with B = 1 the loss is 0). A
    1-example batch is still collated, as the last batch of an evaluation split can be, and
    score leaves it out."""
    L = spec.batch.max_length
    ids = [join(tokenizer, r["context"], None, L)[0] for r in rows]
    ids += [join(tokenizer, r["response"], None, L)[0] for r in rows]
    batch = encoder_inputs(ids, [[0] * len(x) for x in ids], tokenizer.pad_token_id)
    batch["labels"] = torch.arange(len(rows))
    responses = [tuple(r["response"]) for r in rows]
    batch["same_response"] = torch.tensor(
        [[j != i and b == a for j, b in enumerate(responses)] for i, a in enumerate(responses)]
    ).reshape(len(rows), len(rows))
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A dual encoder scoring every context against every response of the batch."""
    return build_head(hidden_size, spec, 1)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[dict]:
    """Per context {"predicted": best response column (ties: the first) among its own and the
    negatives (a copy of its response is none), "label": its own column, "candidates": how many}."""
    same = batch.get("same_response", torch.zeros(logits.shape, dtype=torch.bool)).to(logits.device)
    best = logits.masked_fill(same, float("-inf")).argmax(-1).tolist()  # (B,)
    counts = (~same).sum(-1).tolist()  # (B,): its own response and the real negatives
    return [
        {"predicted": p, "label": i, "candidates": n}
        for i, (p, n) in enumerate(zip(best, counts, strict=True))
    ]


def score(
    predictions: list[dict], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[dict]]:
    """{"recall@1": % of contexts whose own response scored highest among their candidates (the
    batch's responses but copies of their own), over the contexts that had at least 2 candidates."""
    ranked = [p for p in predictions if p["candidates"] >= 2]
    preds, golds = [p["predicted"] for p in ranked], [p["label"] for p in ranked]
    named = [{"id": i, **p} for i, p in zip(features["id"], predictions, strict=True)]
    return {"recall@1": accuracy(preds, golds)}, named


write_predictions = write_rows  # one JSON line per feature row

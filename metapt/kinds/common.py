"""Pieces every kind uses: joining token ids with the tokenizer's special tokens, padding, JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


@cache
def _layout(tokenizer: Any) -> tuple[int, int, bool]:
    """(cls id, sep id, whether pairs use a double separator as RoBERTa does)."""
    pair = tokenizer.num_special_tokens_to_add(pair=True)
    return tokenizer.cls_token_id, tokenizer.sep_token_id, pair == 4


def join(tokenizer: Any, a: list[int], b: list[int] | None, max_length: int) -> tuple[list[int], list[int]]:
    """[CLS] a [SEP] (b [SEP]) cut to max_length, longest part first; returns (input_ids, token_type_ids)."""
    cls, sep, double = _layout(tokenizer)
    if b is None:
        a = a[: max_length - 2]
        return [cls, *a, sep], [0] * (len(a) + 2)
    room = max_length - (4 if double else 3)
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        (a if len(a) >= len(b) else b).pop()
    middle = [sep, sep] if double else [sep]
    ids = [cls, *a, *middle, *b, sep]
    types = [0] * (len(a) + 1 + len(middle)) + [1] * (len(b) + 1)
    return ids, types


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints to one (N, T) long tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def encoder_inputs(ids: list[list[int]], types: list[list[int]], pad_id: int) -> Batch:
    """input_ids, token_type_ids and attention_mask, each (N, T), from unpadded rows."""
    return {
        "input_ids": pad(ids, pad_id),
        "token_type_ids": pad(types, 0),
        "attention_mask": pad([[1] * len(r) for r in ids], 0),
    }


def feature_inputs(rows: list[dict], pad_id: int) -> Batch:
    """`encoder_inputs` of feature rows: their input_ids, and their token_type_ids (zeros for rows
    without any, as single-segment kinds store none)."""
    types = [r["token_type_ids"] if "token_type_ids" in r else [0] * len(r["input_ids"]) for r in rows]
    return encoder_inputs([r["input_ids"] for r in rows], types, pad_id)


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON value per line (the parent folders are made)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

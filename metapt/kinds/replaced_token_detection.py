"""Replaced token detection (ELECTRA, Clark et al. 2020): a share of the tokens is replaced and the
encoder predicts, for every token, whether it was replaced (1) or is the original (0).

ELECTRA samples the replacements from a small masked LM trained jointly with the encoder. metapt
uses a cheaper corruption with no second network (see the README for the measurements behind the
default), chosen by the option `replacement`:
- "uniform" (default): any non-special vocabulary entry, as BERT's 10% random tokens.
- "unigram": a token drawn from the batch's real tokens (the corpus frequency distribution).
- "bigram": a token that follows the same previous token somewhere in the batch, so the left
  neighbour of every replacement is a pair seen in real text; where the batch offers none other
  than the original, a "unigram" draw.
A replacement always differs from the original when the source offers such a token (8 draws), so
labels are exactly "was changed". Positions are drawn per token with `replace_probability` (at
least one per batch), from the generator: fresh corruptions every batch. encode is masked LM's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import datasets
import torch

from metapt.kinds import word_tags
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs
from metapt.kinds.corpus import special_ids, write_rows
from metapt.kinds.labelled import IGNORE
from metapt.kinds.masked_lm import blocks, select_units
from metapt.spec import TaskSpec

_ROUNDS = 8  # draws per position before giving up on finding a token that differs


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"num_labels": 2}."""
    return {"num_labels": word_tags.NUM_LABELS}


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> masked LM's blocks {"input_ids": [CLS] block [SEP], "word_starts"}."""
    return blocks(dataset, tokenizer, spec.batch.max_length, "token", spec.name)


@cache
def _ordinary(tokenizer: Any) -> torch.Tensor:
    """The sorted ids of every non-special token."""
    special = set(special_ids(tokenizer))
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def _from_pool(
    pool: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, original: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """(K,) tokens drawn uniformly from pool[lo:hi] that differ from `original`, or -1 where none
    was found in _ROUNDS draws (or the range is empty)."""
    new = torch.full_like(original, -1)
    width = hi - lo
    for _ in range(_ROUNDS):
        at = lo + (torch.rand(original.shape, generator=g) * width).long().clamp(max=(width - 1).clamp(min=0))
        drawn = pool[at.clamp(max=max(len(pool) - 1, 0))] if len(pool) else new
        ok = (new < 0) & (width > 0) & (drawn != original)
        new = torch.where(ok, drawn, new)
    return new


def replacements(
    ids: torch.Tensor,
    candidate: torch.Tensor,
    selected: torch.Tensor,
    mode: str,
    tokenizer: Any,
    g: torch.Generator,
) -> torch.Tensor:
    """(K,) replacement ids for the selected positions (row-major order), by `mode`."""
    rows, cols = selected.nonzero(as_tuple=True)
    original = ids[rows, cols]  # (K,)
    new = torch.full_like(original, -1)
    follows = candidate[:, 1:]  # (N, T-1): candidates, by their previous token
    keys, tokens = ids[:, :-1][follows], ids[:, 1:][follows]  # (C,) each
    if mode == "bigram":
        order = torch.argsort(keys, stable=True)
        keys, by_key = keys[order], tokens[order]
        previous = ids[rows, cols - 1]
        lo, hi = torch.searchsorted(keys, previous), torch.searchsorted(keys, previous, right=True)
        new = _from_pool(by_key, lo, hi, original, g)
    if mode in ("bigram", "unigram"):
        zero, size = torch.zeros_like(original), torch.full_like(original, len(tokens))
        new = torch.where(new < 0, _from_pool(tokens, zero, size, original, g), new)
    ordinary = _ordinary(tokenizer)  # uniform, and the last resort of the others
    at = torch.searchsorted(ordinary, original)
    r = torch.randint(max(len(ordinary) - 1, 1), original.shape, generator=g)
    uniform = ordinary[r + (r >= at).long()]  # any ordinary token but the original
    return torch.where(new < 0, uniform, new)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids (corrupted), token_type_ids, attention_mask, labels (N, T): 1 replaced, 0 original,
    -100 at special tokens and padding."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    ids = batch["input_ids"]  # (N, T)
    candidate = ~torch.isin(ids, torch.tensor(special_ids(tokenizer))) & batch["attention_mask"].bool()
    selected = select_units(candidate, candidate, spec.option("replace_probability"), False, generator)
    corrupted = ids.clone()
    corrupted[selected] = replacements(
        ids, candidate, selected, spec.option("replacement"), tokenizer, generator
    )
    batch["input_ids"] = corrupted
    batch["labels"] = (corrupted != ids).long().masked_fill(~candidate, IGNORE)
    return batch


# The head, predictions and metrics are word_tags' (per-token binary tags).
head, predict, score = word_tags.head, word_tags.predict, word_tags.score
write_predictions = write_rows  # one JSON line per feature row

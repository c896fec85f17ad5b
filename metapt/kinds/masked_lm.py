"""Masked language modelling with dynamic 80/10/10 masking (BERT), of single tokens, whole words, or
ERNIE's knowledge units: whole phrases or entities (option `masking`; spans: metapt/kinds/knowledge.py).

encode concatenates the documents of each map batch (a [SEP] between documents) and cuts the
stream into blocks of max_length - 2 tokens, as run_mlm.py's group_texts does, but keeps the short
last block. Masking happens in collate, so every epoch (and every resume) sees fresh masks drawn
from the generator.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import nn

from metapt.catalog import masking_of
from metapt.errors import MetaptError
from metapt.kinds import knowledge
from metapt.kinds.base import Batch, Info
from metapt.kinds.common import feature_inputs, join, pad
from metapt.kinds.corpus import build_head, map_records, special_ids, write_rows
from metapt.metrics import accuracy
from metapt.spec import TaskSpec


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn from the records. The head also needs info["vocab_size"] = len(tokenizer),
    which the caller adds (prepare does not see the tokenizer)."""
    return {}


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> blocks {"input_ids": [CLS] block [SEP], "word_starts": 1 where a masking unit
    begins: a word, or with phrase / entity masking a whole span (see metapt/kinds/knowledge.py)}."""
    return blocks(dataset, tokenizer, spec.batch.max_length, masking_of(spec.options), spec.name)


def blocks(dataset: Any, tokenizer: Any, max_length: int, masking: str, name: str = "") -> Any:
    """The documents concatenated ([SEP] between them) and cut into [CLS] block [SEP] rows, with the
    units `masking` selects marked in "word_starts"."""
    block, sep = max_length - 2, tokenizer.sep_token_id
    by_span = masking in knowledge.SPAN_FIELDS

    def fn(batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values())))
        texts, sentences = batch.get("text") or [None] * n, batch.get("sentences") or [None] * n
        texts = [t or " ".join(s or []) for t, s in zip(texts, sentences, strict=True)]
        given = batch.get(knowledge.SPAN_FIELDS[masking]) if by_span else None
        ids_of = batch.get("id") or list(range(n))
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=by_span)
        ids: list[int] = []
        starts: list[int] = []
        for i, doc in enumerate(enc["input_ids"]):
            if not doc:
                continue
            if ids:  # a separator between documents, never masked
                ids.append(sep)
                starts.append(1)
            words = enc.word_ids(i)
            flags = [int(j == 0 or w is None or w != words[j - 1]) for j, w in enumerate(words)]
            if by_span:
                where = f"task {name!r}, record {ids_of[i]!r}"
                spans = knowledge.spans_for(masking, texts[i], given[i] if given else None, where)
                flags = knowledge.unit_starts(flags, enc["offset_mapping"][i], spans)
            ids += doc
            starts += flags
        out: dict[str, list] = {"input_ids": [], "word_starts": []}
        for b in range(0, len(ids), block):
            piece, flags = ids[b : b + block], starts[b : b + block]
            flags[0] = 1  # a unit cut by the block boundary starts afresh
            out["input_ids"].append(join(tokenizer, piece, None, max_length)[0])
            out["word_starts"].append([1, *flags, 1])
        return out

    return map_records(dataset, fn)


def select_units(
    starts: torch.Tensor, candidate: torch.Tensor, p: float, whole_word: bool, generator: torch.Generator
) -> torch.Tensor:
    """Bool (N, T): the positions to predict, at least one; whole units (from `starts`) when
    `whole_word`, else single tokens."""
    units = starts if whole_word else torch.ones_like(starts)  # where a maskable unit begins
    positions = torch.arange(starts.shape[1]).expand_as(starts)
    first = torch.cummax(torch.where(units, positions, 0), dim=1).values  # (N, T): its unit's start
    picked = (torch.rand(starts.shape, generator=generator) < p) & units & candidate
    if not picked.any():  # an empty selection would make the loss NaN
        options = (units & candidate).nonzero()  # (K, 2)
        row, col = options[torch.randint(len(options), (), generator=generator)].tolist()
        picked[row, col] = True
    return picked.gather(1, first) & candidate


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """Blocks -> input_ids, token_type_ids, attention_mask, labels (N, T); labels are -100 except at
    the selected positions, of which 80% read [MASK], 10% a random token and 10% stay
    unchanged (each position rolls for itself, also inside a whole word or span, as BERT and ERNIE)."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    ids = batch["input_ids"]  # (N, T)
    starts = pad([r["word_starts"] for r in rows], 1).bool()  # (N, T)
    candidate = ~torch.isin(ids, torch.tensor(special_ids(tokenizer))) & batch["attention_mask"].bool()
    whole = masking_of(spec.options) != "token"  # whole words, phrases and entities: whole units
    selected = select_units(starts, candidate, spec.option("mask_probability"), whole, generator)
    labels = ids.masked_fill(~selected, -100)
    roll = torch.rand(ids.shape, generator=generator)  # (N, T)
    # The random token is any id of the vocabulary, special ones included, as BERT's
    # create_pretraining_data.py and Hugging Face's DataCollatorForLanguageModeling (run_mlm.py)
    # draw it; fairseq (RoBERTa) leaves the special tokens out (docs/task-kinds.md).
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)  # (N, T)
    masked = ids.masked_fill(selected & (roll < 0.8), tokenizer.mask_token_id)
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    batch["input_ids"] = torch.where(swap, random_ids, masked)
    batch["labels"] = labels
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """The MLM head over the tokenizer's vocabulary: info["vocab_size"] outputs (the rows of the
    encoder's embedding matrix, to which the head is tied)."""
    if "vocab_size" not in info:
        raise MetaptError(
            f"task {spec.name!r}: a masked_lm head needs info['vocab_size'] "
            "(len(tokenizer)) to size its output"
        )
    return build_head(hidden_size, spec, info["vocab_size"])


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[dict]:
    """Per sequence: {"predicted", "labels"} ids at its masked positions and "loss", their summed NLL."""
    labels = batch["labels"]
    gold = labels[labels != -100]  # (M,), the order of the head's rows
    nll = F.cross_entropy(logits.float(), gold, reduction="none").tolist()
    predicted = logits.argmax(-1).tolist()
    counts = (labels != -100).sum(1).tolist()
    out, i = [], 0
    for n in counts:
        out.append(
            {
                "predicted": predicted[i : i + n],
                "labels": gold[i : i + n].tolist(),
                "loss": math.fsum(nll[i : i + n]),
            }
        )
        i += n
    return out


def score(
    predictions: list[dict], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[dict]]:
    """{"accuracy": % of masked tokens predicted right, "loss": mean NLL per masked token}."""
    predicted = [t for p in predictions for t in p["predicted"]]
    gold = [t for p in predictions for t in p["labels"]]
    loss = math.fsum(p["loss"] for p in predictions) / max(len(gold), 1)
    return {"accuracy": accuracy(predicted, gold), "loss": loss}, predictions


write_predictions = write_rows  # one JSON line per feature row

"""The kind contract pinned in one place: a toy task kind, defined here, goes through the library's own
path (read -> prepare -> encode -> batches -> model -> predict -> score -> prediction files, then
finetune and evaluate) and every value on the way is computed by hand.

This module IS the toy kind: its module-level functions `prepare`, `encode`, `collate`, `head`,
`predict`, `score` and `write_predictions` are the contract of metapt/kinds/base.py, read by
`Kind.of(sys.modules[__name__])`, and `INFO` is its catalog entry. Adding a real kind is the same three
steps: a module in metapt/kinds/, a `catalog.KINDS` entry, a `kinds.IMPLEMENTATIONS` entry.

The toy task: is a text long (4 or more words) or short? Its head adds a fixed length prior,
(n_words - 3.5, 0) for the labels (long, short), to a linear layer on the first token that starts at
zero, so an untrained model predicts by the rule and its loss and metrics are known by hand; a few
finetuning steps at lr 1e-5 move that layer by far less than the prior's margin of 0.5.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertModel

from metapt import catalog, kinds
from metapt.catalog import KindInfo
from metapt.data.batches import eval_batches, stream_for
from metapt.data.pipeline import load_task
from metapt.data.tokenizer import train_wordpiece
from metapt.errors import MetaptError
from metapt.finetune import finetune_one
from metapt.finetuned import build, evaluate
from metapt.finetuned import score as score_split
from metapt.kinds.base import Batch, Info, Kind
from metapt.kinds.common import feature_inputs, write_jsonl
from metapt.spec import BatchSpec, DataSpec, FinetuneSpec, TaskSpec
from metapt.validation import parse_task

INFO = KindInfo(
    role="target",
    heads=("length_prior",),  # the toy's own head; nothing else looks the name up
    losses=("cross_entropy",),
    metrics=("accuracy",),
    fields=("text", "label"),
    help="toy: is a text long (4 or more words) or short?",
)


# ----------------------------------------------------------------------------- the toy kind
def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """{"labels": the sorted distinct train labels}."""
    return {"labels": sorted(set(train["label"]))}


def encode(records: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Records -> {"input_ids": [CLS] words [SEP], "labels": label id}."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], truncation=True, max_length=spec.batch.max_length)
        return {"input_ids": enc["input_ids"], "labels": [info["labels"].index(v) for v in batch["label"]]}

    return records.map(fn, batched=True, remove_columns=records.column_names)


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask (B, T); labels (B,)."""
    labels = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    return {**feature_inputs(rows, tokenizer.pad_token_id), "labels": labels}


class LengthPriorHead(nn.Module):
    """(B, 2) logits: a zero-initialised linear layer on the first token plus (n_words - 3.5, 0)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        words = batch["attention_mask"].sum(-1) - 2  # (B,): without [CLS] and [SEP]
        prior = torch.stack([words - 3.5, torch.zeros_like(words, dtype=torch.float)], -1)  # (B, 2)
        return self.out(hidden[:, 0]) + prior


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """The length-prior classifier (two labels: long, short)."""
    return LengthPriorHead(hidden_size)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[int]:
    """The arg-max label id of each (B, 2) row."""
    return logits.argmax(-1).tolist()


def score(
    predictions: list[int], features: datasets.Dataset, records: datasets.Dataset, spec: TaskSpec, info: Info
) -> tuple[dict[str, float], list[str]]:
    """accuracy (0-100) against the records' labels; per-record predictions are label names."""
    names = [info["labels"][p] for p in predictions]
    right = sum(p == g for p, g in zip(names, records["label"], strict=True))
    return {"accuracy": 100.0 * right / len(names)}, names


def write_predictions(path: Path, predictions: list[Any], records: datasets.Dataset, info: Info) -> None:
    """One {"text", "label"} JSON line per record."""
    write_jsonl(path, ({"text": t, "label": p} for t, p in zip(records["text"], predictions, strict=True)))


# ------------------------------------------------------------------------------- fixtures
# n words -> the rule's label; the one record per split whose gold label breaks the rule is marked.
SPLITS = {
    "train": [
        ("the cat sat", "short"),
        ("a dog ran far away", "long"),
        ("birds sing", "short"),
        ("the old man walked home", "long"),
    ],
    "validation": [
        ("cats sleep", "short"),
        ("the dog sat on a mat", "long"),
        ("rain fell", "short"),
        ("a man sat here", "long"),
        ("the bird flew far away", "short"),  # 5 words: the rule says long
    ],
    "test": [
        ("dogs ran", "short"),
        ("the cat walked far", "long"),
        ("the man sang", "long"),  # 3 words: the rule says short
        ("a bird sang a song", "long"),
    ],
}


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy kind registered as every kind is: a catalog entry and an implementation."""
    monkeypatch.setitem(catalog.KINDS, "toy", INFO)
    monkeypatch.setitem(kinds.IMPLEMENTATIONS, "toy", Kind.of(sys.modules[__name__]))


@pytest.fixture
def spec(tmp_path: Path) -> TaskSpec:
    """A toy task over three JSON-lines files, batches of 2, one finetuning epoch at lr 1e-5."""
    for split, rows in SPLITS.items():
        write_jsonl(tmp_path / f"{split}.jsonl", ({"text": t, "label": label} for t, label in rows))
    data = DataSpec(
        format="jsonl",
        train="train.jsonl",
        validation="validation.jsonl",
        test="test.jsonl",
        base_dir=str(tmp_path),
    )
    return TaskSpec(
        kind="toy",
        name="toy",
        data=data,
        batch=BatchSpec(size=2, max_length=16),
        finetune=FinetuneSpec(epochs=1, lr=1e-5, warmup_ratio=0.0),
    )


@pytest.fixture
def tokenizer() -> Any:
    """A WordPiece over the fixtures' words: every word is one token."""
    return train_wordpiece([t for rows in SPLITS.values() for t, _ in rows], vocab_size=200)


def _encoder(tokenizer: Any) -> BertModel:
    """A random 1-layer, 32-wide BERT over the tokenizer's vocabulary (seeded)."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config, add_pooling_layer=False)


# ---------------------------------------------------------------------------------- tests
def test_a_kind_registered_at_run_time_is_a_valid_spec_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec's allowed kinds are the registry itself, not a copy taken at import.
    for split, rows in SPLITS.items():
        write_jsonl(tmp_path / f"{split}.jsonl", ({"text": t, "label": label} for t, label in rows))
    path = tmp_path / "toy.toml"
    path.write_text(
        'kind = "toy"\nname = "toy"\n[data]\nformat = "jsonl"\n'
        'train = "train.jsonl"\nvalidation = "validation.jsonl"\ntest = "test.jsonl"\n'
    )
    with pytest.raises(MetaptError, match="'toy' is not allowed"):
        parse_task(path)
    monkeypatch.setitem(catalog.KINDS, "toy", INFO)
    monkeypatch.setitem(kinds.IMPLEMENTATIONS, "toy", Kind.of(sys.modules[__name__]))
    assert parse_task(path).kind == "toy"


def test_load_prepares_and_encodes_by_the_contract(toy: None, spec: TaskSpec, tokenizer: Any) -> None:
    task = load_task(spec, tokenizer, ("train", "validation"))
    assert task.info == {"labels": ["long", "short"], "vocab_size": len(tokenizer)}
    first = task.features["train"][0]  # "the cat sat": [CLS] the cat sat [SEP]
    words = tokenizer.convert_tokens_to_ids(["the", "cat", "sat"])
    assert first["input_ids"] == [tokenizer.cls_token_id, *words, tokenizer.sep_token_id]
    assert task.features["train"]["labels"] == [1, 0, 1, 0]
    assert len(task.features["validation"]) == 5 and task.warnings == []


def test_batches_model_predict_score_give_the_hand_computed_values(
    toy: None, spec: TaskSpec, tokenizer: Any
) -> None:
    task = load_task(spec, tokenizer, ("train", "validation"))
    (rows, batch), *rest = list(eval_batches(task, tokenizer, "validation", 2))
    assert len(rest) == 2 and len(rows) == 2  # 5 records in batches of 2: 2 + 2 + 1
    # "cats sleep" (2 words) and "the dog sat on a mat" (6), padded to 8 tokens
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert batch["labels"].tolist() == [1, 0]
    model = build(_encoder(tokenizer), task).eval()
    loss, logits = model("toy", batch)
    assert logits.tolist() == [[-1.5, 0.0], [2.5, 0.0]]  # (n - 3.5, 0)
    # cross-entropy of the gold labels, short then long: log(1 + e^-1.5) and log(1 + e^-2.5), averaged
    assert loss.item() == pytest.approx(
        (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-2.5))) / 2, abs=1e-6
    )
    assert predict(logits, batch, task.info) == [1, 0]
    metrics, names = score_split(
        model, task, tokenizer, "validation", torch.device("cpu"), contextlib.nullcontext
    )
    assert metrics == {"accuracy": 80.0}  # 4 of 5: the rule says long for the 5-word "short"
    assert names == ["short", "long", "short", "long", "long"]
    stream = stream_for(task, tokenizer, 2, seed=0, salt="toy")  # training batches: one pass, 2 batches
    lengths = [n for _ in range(2) for n in stream.next()["attention_mask"].sum(-1).tolist()]
    assert sorted(lengths) == [4, 5, 7, 7]  # each train text once: 2, 3, 5, 5 words + [CLS], [SEP]


def test_finetune_and_evaluate_a_toy_kind(toy: None, spec: TaskSpec, tokenizer: Any, tmp_path: Path) -> None:
    ckpt = tmp_path / "encoder"
    _encoder(tokenizer).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    out = tmp_path / "finetuned"
    results = finetune_one(str(ckpt), spec, seed=1, out=out, device_name="cpu")
    assert results["metrics"] == {"validation": {"accuracy": 80.0}, "test": {"accuracy": 75.0}}
    assert results["main_metric"] == "accuracy" and results["best_epoch"] == 1
    assert results["predictions"] == {
        "validation": "predictions/validation.jsonl",
        "test": "predictions/test.jsonl",
    }
    written = [json.loads(line) for line in (out / "predictions" / "test.jsonl").read_text().splitlines()]
    assert [r["label"] for r in written] == ["short", "long", "short", "long"]
    assert written[2] == {"text": "the man sang", "label": "short"}
    trained = load_file(out / "model" / "head.safetensors")["out.weight"]  # (2, H): it did train, a little
    assert 0 < trained.abs().max().item() < 1e-3
    again = evaluate(out, spec, "test", device_name="cpu")
    assert again["metrics"] == {"accuracy": 75.0} and again["main_metric"] == "accuracy"
    assert json.loads((out / "evaluation-test.json").read_text())["metrics"] == {"accuracy": 75.0}
